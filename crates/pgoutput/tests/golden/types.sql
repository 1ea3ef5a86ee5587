-- A "type zoo": every common column type, with edge values. Recorded twice (see
-- captures.txt): in text mode and with binary=true. The enum, the domain and the enum
-- array are announced by Type messages before the Relation.
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE TABLE zoo (
    id integer PRIMARY KEY,
    c_int2 smallint,
    c_int4 integer,
    c_int8 bigint,
    c_float4 real,
    c_float8 double precision,
    c_numeric numeric,
    c_numeric_scaled numeric(12, 4),
    c_bool boolean,
    c_text text,
    c_varchar varchar(20),
    c_bpchar char(5),
    c_name name,
    c_bytea bytea,
    c_uuid uuid,
    c_date date,
    c_time time,
    c_timetz timetz,
    c_timestamp timestamp,
    c_timestamptz timestamptz,
    c_interval interval,
    c_json json,
    c_jsonb jsonb,
    c_inet inet,
    c_cidr cidr,
    c_macaddr macaddr,
    c_mood mood,
    c_positive positive_int,
    c_int4_array integer[],
    c_text_array text[],
    c_int4_matrix integer[][],
    c_mood_array mood[]
);
CREATE PUBLICATION golden FOR TABLE zoo;

-- golden:capture
-- Ordinary values.
INSERT INTO zoo VALUES (
    1, 12, 123456, 1234567890123, 1.5, 0.1, 123.4500, 3.1416, true,
    'hello', 'varchar', 'ab', 'a_name',
    '\x0102ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '2024-03-01', '13:45:06.5', '13:45:06.123+02', '2024-03-01 13:45:06.123456', '2024-03-01 13:45:06.1+00',
    '1 year 2 mons 3 days 04:05:06.789', '{"b": 1,  "a": [1, 2]}', '{"b": 1,  "a": [1, 2]}',
    '10.0.0.1', '10.0.0.0/8', '08:00:2b:01:02:03',
    'happy', 42,
    '{1,2,3}', '{"a b","x\"y",""}', '{{1,2},{3,4}}', '{sad,happy}'
);
-- Edge values: extremes, NaN and infinities, BC dates, negative intervals, NULL array elements.
INSERT INTO zoo VALUES (
    2, -32768, -2147483648, 9223372036854775807, 'NaN', '-Infinity', 'NaN', '-0.0001', false,
    E'quote '' backslash \\ tab \t newline \n unicode é😀', '', 'abcde', '',
    '\x00', '00000000-0000-0000-0000-000000000000',
    'infinity', '00:00:00', '23:59:59.999999-05:30', '-infinity', 'infinity',
    '-1 days +02:00:00', '[]', '{"k": null, "n": 1.50}',
    '::1', '2001:db8::/32', 'ff:ff:ff:ff:ff:ff',
    'sad', 1,
    '{1,NULL,3}', '{NULL,"NULL"}', '{{1,NULL},{NULL,4}}', '{}'
);
INSERT INTO zoo VALUES (
    3, 32767, 2147483647, -9223372036854775808, 'Infinity', 'Infinity', 'Infinity', NULL, NULL,
    NULL, NULL, NULL, NULL, NULL, NULL,
    '0044-03-15 BC', NULL, NULL, '0001-01-01 00:00:00 BC', '-infinity',
    '0', NULL, NULL, NULL, NULL, NULL,
    NULL, NULL,
    '[0:1]={7,8}', NULL, NULL, NULL
);
-- Every column NULL except the key.
INSERT INTO zoo (id) VALUES (4);
INSERT INTO zoo (id, c_float4, c_float8, c_numeric, c_timestamp) VALUES (5, '-Infinity', '-0', '-Infinity', 'infinity');
UPDATE zoo SET c_mood = 'ok', c_float4 = -0.0 WHERE id = 1;
