#!/usr/bin/env bash
# Run once by the postgres image on an empty data directory: the demo schema,
# then pgfanout's least-privilege role and its publication (sql/).
set -euo pipefail
psql=(psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB")
"${psql[@]}" -f /sql/demo_schema.sql
"${psql[@]}" -v role=pgfanout -v password="$PGFANOUT_PASSWORD" \
    -v tables=public.cities,public.users,public.properties,public.reservations,public.reviews \
    -f /sql/pgfanout_role.sql
"${psql[@]}" -v publication=pgfanout_demo \
    -v tables=public.cities,public.users,public.properties,public.reservations,public.reviews \
    -f /sql/pgfanout_publication.sql
