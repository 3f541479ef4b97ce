-- +goose Up
-- Names learned from DNS answers (pb.Flow orig_name / resp_name), indexes
-- for retention and for the api's per-sensor alert and metric queries.
ALTER TABLE flows ADD COLUMN IF NOT EXISTS orig_name text NOT NULL DEFAULT '';
ALTER TABLE flows ADD COLUMN IF NOT EXISTS resp_name text NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS partitions_parent_range ON partitions (parent, range_end);
CREATE INDEX IF NOT EXISTS alerts_severity_time ON alerts (severity, time);

-- +goose Down
DROP INDEX IF EXISTS alerts_severity_time;
DROP INDEX IF EXISTS partitions_parent_range;
ALTER TABLE flows DROP COLUMN IF EXISTS resp_name;
ALTER TABLE flows DROP COLUMN IF EXISTS orig_name;
