#!/usr/bin/env python3
"""Run one CQL statement against a Cassandra node and print the rows.

    deploy/local/cql.py PORT 'SELECT release_version FROM system.local'

Speaks the CQL native protocol (v4) over a plain socket, so the local stack
needs neither cqlsh nor a driver. Rows are printed one a line, columns
separated by tabs; text, ascii, varchar and integers are decoded, other
types are printed as hex. A server error exits with status 1 and its message.
"""
import socket
import struct
import sys

TEXT_TYPES = {0x0001, 0x000A, 0x000D}  # ascii, text, varchar
INT_TYPES = {0x0002: ">q", 0x0009: ">i", 0x0013: ">h", 0x0014: ">b"}  # bigint, int, smallint, tinyint


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    port, query = int(sys.argv[1]), sys.argv[2].encode()
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)

    def read_exactly(n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                sys.exit("connection closed by the server")
            data += chunk
        return data

    def call(opcode, body):
        conn.sendall(struct.pack(">BBhBi", 4, 0, 0, opcode, len(body)) + body)
        _, _, _, op, length = struct.unpack(">BBhBi", read_exactly(9))
        data = read_exactly(length)
        if op == 0x00:
            code, n = struct.unpack(">iH", data[:6])
            sys.exit(f"error {code:#x}: {data[6:6 + n].decode(errors='replace')}")
        return data

    def string(text):
        return struct.pack(">H", len(text)) + text

    call(0x01, struct.pack(">H", 1) + string(b"CQL_VERSION") + string(b"3.0.0"))
    data = call(0x07, struct.pack(">i", len(query)) + query + struct.pack(">HB", 1, 0))
    (kind,) = struct.unpack(">i", data[:4])
    if kind != 2:  # not rows: a write or a schema change succeeded
        return
    flags, columns = struct.unpack(">ii", data[4:12])
    at = 12

    def skip_string(at):
        return at + 2 + struct.unpack(">H", data[at:at + 2])[0]

    def read_option(at):
        (type_id,) = struct.unpack(">H", data[at:at + 2])
        at += 2
        if type_id in (0x20, 0x22):  # list, set
            at = read_option(at)[1]
        elif type_id == 0x21:  # map
            at = read_option(read_option(at)[1])[1]
        elif type_id == 0x00:  # custom
            at = skip_string(at)
        return type_id, at

    if flags & 0x0002:  # has more pages: a paging state
        at += 4 + struct.unpack(">i", data[at:at + 4])[0]
    if flags & 0x0001:  # global table spec
        at = skip_string(skip_string(at))
    types = []
    for _ in range(columns):
        if not flags & 0x0001:
            at = skip_string(skip_string(at))
        type_id, at = read_option(skip_string(at))
        types.append(type_id)
    (rows,) = struct.unpack(">i", data[at:at + 4])
    at += 4
    for _ in range(rows):
        cells = []
        for type_id in types:
            (n,) = struct.unpack(">i", data[at:at + 4])
            at += 4
            value = data[at:at + max(n, 0)]
            at += max(n, 0)
            if n < 0:
                cells.append("")
            elif type_id in TEXT_TYPES:
                cells.append(value.decode(errors="replace"))
            elif type_id in INT_TYPES:
                cells.append(str(struct.unpack(INT_TYPES[type_id], value)[0]))
            else:
                cells.append(value.hex())
        print("\t".join(cells))


if __name__ == "__main__":
    main()
