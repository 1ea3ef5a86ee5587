-- The publication pgfanout reads, created by the tables' owner (only the
-- owner may publish a table), so pgfanout's own role needs no ownership.
-- Idempotent: creates the publication when missing, adds the listed tables
-- it lacks, and never drops one. Set `create_publication = false` in
-- pgfanout's [source] when this script manages the publication.
--
--   psql -v publication=pgfanout -v tables=public.users,public.reservations \
--        [-v full_identity=public.reviews] -f sql/pgfanout_publication.sql app
--
-- Replica identity: the default (the primary key) is what pgfanout needs,
-- except tables whose MongoDB sink keeps running aggregates, which need the
-- whole old row: list those in `full_identity`.
\set ON_ERROR_STOP on
\if :{?full_identity}
\else
\set full_identity ''
\endif

SELECT format('table %s does not exist', name)::int
FROM unnest(string_to_array(:'tables', ',')) AS name
WHERE to_regclass(trim(name)) IS NULL;

SELECT format('CREATE PUBLICATION %I', :'publication')
WHERE NOT EXISTS (SELECT FROM pg_publication WHERE pubname = :'publication')
\gexec

SELECT format('ALTER PUBLICATION %I ADD TABLE %s', :'publication', to_regclass(trim(name)))
FROM unnest(string_to_array(:'tables', ',')) AS name
WHERE NOT EXISTS (
    SELECT FROM pg_publication_rel pr
    JOIN pg_publication p ON p.oid = pr.prpubid
    WHERE p.pubname = :'publication' AND pr.prrelid = to_regclass(trim(name))
)
\gexec

SELECT format('ALTER TABLE %s REPLICA IDENTITY FULL', to_regclass(trim(name)))
FROM unnest(string_to_array(:'full_identity', ',')) AS name
WHERE trim(name) <> ''
  AND (SELECT relreplident FROM pg_class WHERE oid = to_regclass(trim(name))) <> 'f'
\gexec
