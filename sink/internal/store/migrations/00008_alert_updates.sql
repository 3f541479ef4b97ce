-- +goose Up
-- One row per alert id (DESIGN.md: one alert per rule, originator, target and
-- window, updated while the attack goes on). The detector re-publishes an
-- alert with the same id and growing evidence; the sink updates that row in
-- place: last_time is the packet time of the newest evidence stored (NULL
-- until the first update), updates counts the updates applied. A
-- redelivered or older update changes nothing.
ALTER TABLE alerts ADD COLUMN last_time timestamptz;
ALTER TABLE alerts ADD COLUMN updates integer NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE alerts DROP COLUMN updates;
ALTER TABLE alerts DROP COLUMN last_time;
