#!/usr/bin/env python3
"""Run one Cypher query against the local stack's Neo4j and print the rows.

    .venv/bin/python deploy/local/cypher.py bolt://127.0.0.1:PORT 'MATCH (n) RETURN labels(n), count(*)'

Uses the official driver installed into .venv by `deploy/local/stack.sh
install` (the stack's Neo4j runs without authentication). Rows are printed
one a line, values separated by tabs.
"""
import sys

from neo4j import GraphDatabase


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    # An auto-commit session.run, not execute_query's managed transaction:
    # `CALL { … } IN TRANSACTIONS` (the benches' batched reset) needs it.
    with GraphDatabase.driver(sys.argv[1], auth=None) as driver, driver.session() as session:
        for record in session.run(sys.argv[2]):
            print("\t".join(str(value) for value in record.values()))


if __name__ == "__main__":
    main()
