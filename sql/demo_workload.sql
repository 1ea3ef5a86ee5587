-- Demo workload for sql/demo_schema.sql: every 0.5 s one transaction that
-- books a reservation and, now and then, confirms/completes/cancels one,
-- deletes one (its review goes with it), reviews a completed stay or changes
-- a property's price. Runs until psql is interrupted:
--   psql -X -q -v ON_ERROR_STOP=1 -d app -f sql/demo_workload.sql
-- Each tick prints one line saying what it did.

CREATE OR REPLACE FUNCTION demo_workload_tick() RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    done      text[] := '{}';
    prop      properties%ROWTYPE;
    guest_id  bigint;
    nights    int;
    start_day date;
    res_id    bigint;
    old_state text;
    new_state text;
    max_id    bigint;
BEGIN
    -- Book: a random active property, a random guest who is not its host.
    SELECT * INTO prop FROM properties WHERE active ORDER BY random() LIMIT 1;
    SELECT id INTO guest_id FROM users WHERE id <> prop.host_id ORDER BY random() LIMIT 1;
    nights := 1 + floor(random() * 7)::int;
    start_day := current_date + (1 + floor(random() * 120)::int);
    INSERT INTO reservations (property_id, guest_id, check_in, check_out, total_price)
    VALUES (prop.id, guest_id, start_day, start_day + nights, prop.price_per_night * nights)
    RETURNING id INTO res_id;
    done := done || format('booked #%s', res_id);

    -- A random existing reservation, found without scanning the whole table.
    SELECT max(id) INTO max_id FROM reservations;

    -- Move one reservation along: pending -> confirmed -> completed, or cancelled.
    IF random() < 0.5 THEN
        SELECT id, status INTO res_id, old_state FROM reservations
        WHERE id >= floor(random() * max_id) AND status IN ('pending', 'confirmed')
        ORDER BY id LIMIT 1;
        IF FOUND THEN
            new_state := CASE
                WHEN random() < 0.15 THEN 'cancelled'
                WHEN old_state = 'pending' THEN 'confirmed'
                ELSE 'completed' END;
            UPDATE reservations SET status = new_state, updated_at = now() WHERE id = res_id;
            done := done || format('#%s %s->%s', res_id, old_state, new_state);
        END IF;
    END IF;

    -- Review a completed stay that has no review yet.
    IF random() < 0.3 THEN
        SELECT r.id INTO res_id FROM reservations r
        WHERE r.status = 'completed'
          AND NOT EXISTS (SELECT 1 FROM reviews v WHERE v.reservation_id = r.id)
        ORDER BY random() LIMIT 1;
        IF FOUND THEN
            INSERT INTO reviews (reservation_id, rating, comment)
            VALUES (res_id, 1 + floor(random() * 5)::int,
                    (ARRAY['Excelente ubicación', 'Muy limpio', 'El anfitrión respondió rápido',
                           'Ruidoso por la noche', 'Volvería sin dudar'])[1 + floor(random() * 5)::int]);
            done := done || format('reviewed #%s', res_id);
        END IF;
    END IF;

    -- Delete one (cancelled ones first); a review of it is deleted by cascade.
    IF random() < 0.15 THEN
        SELECT id INTO res_id FROM reservations
        WHERE id >= floor(random() * max_id)
        ORDER BY (status = 'cancelled') DESC, id LIMIT 1;
        IF FOUND THEN
            DELETE FROM reservations WHERE id = res_id;
            done := done || format('deleted #%s', res_id);
        END IF;
    END IF;

    -- Reprice a property now and then (updates on another table, with numeric).
    IF random() < 0.05 THEN
        UPDATE properties
        SET price_per_night = round(price_per_night * (0.9 + random() * 0.2)::numeric, 2)
        WHERE id = prop.id;
        done := done || format('repriced property %s', prop.id);
    END IF;

    RETURN array_to_string(done, ', ');
END
$$;

\pset tuples_only on
\pset format unaligned
SELECT now()::time(0) || '  ' || demo_workload_tick() \watch 0.5
