-- pgfanout's least-privilege role: LOGIN and REPLICATION (to create and read
-- its slot), SELECT on the published tables only (for the catalog and the
-- initial read), nothing else: not a superuser, owns no table.
-- Idempotent: run it again after adding tables to `tables`.
--
-- Run as a superuser (only a superuser may grant REPLICATION), connected to
-- the application's database:
--
--   psql -v role=pgfanout -v password="$PGFANOUT_PASSWORD" \
--        -v tables=public.users,public.reservations -f sql/pgfanout_role.sql app
--
-- `password` may be left out (e.g. peer or certificate authentication).
-- The heartbeat (source.heartbeat_interval_secs) calls
-- pg_logical_emit_message, which PostgreSQL lets every role execute: it
-- needs no grant here.
\set ON_ERROR_STOP on
\if :{?password}
\else
\set password ''
\endif

SELECT format('CREATE ROLE %I LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE', :'role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role')
\gexec

-- An existing role is brought to the same attributes.
SELECT format('ALTER ROLE %I LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE', :'role')
\gexec

SELECT format('ALTER ROLE %I PASSWORD %L', :'role', :'password')
WHERE :'password' <> ''
\gexec

-- Every listed table must exist: a typo stops the script with its name.
SELECT format('table %s does not exist', name)::int
FROM unnest(string_to_array(:'tables', ',')) AS name
WHERE to_regclass(trim(name)) IS NULL;

SELECT format('GRANT USAGE ON SCHEMA %I TO %I', nspname, :'role')
FROM (
    SELECT DISTINCT n.nspname
    FROM unnest(string_to_array(:'tables', ',')) AS name
    JOIN pg_class c ON c.oid = to_regclass(trim(name))
    JOIN pg_namespace n ON n.oid = c.relnamespace
) AS schemas
\gexec

SELECT format('GRANT SELECT ON TABLE %s TO %I', to_regclass(trim(name)), :'role')
FROM unnest(string_to_array(:'tables', ',')) AS name
\gexec
