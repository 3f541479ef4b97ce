-- +goose Up
-- Messages the sink gave up on (issue 6 "Faults"): the database rejected
-- their rows as data (SQLSTATE class 22/23) or their write alone hit the
-- statement timeout repeatedly. Each is kept here with the reason and
-- terminated on its stream, so it is neither lost silently nor retried
-- forever. An operator can inspect, fix and republish data.
CREATE TABLE parked_messages (
    id          bigserial   PRIMARY KEY,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    tbl         text        NOT NULL,  -- flows, alerts, host_metrics
    stream      text        NOT NULL,
    stream_seq  bigint      NOT NULL,  -- sequence in the stream
    subject     text        NOT NULL,
    msg_id      text        NOT NULL DEFAULT '',  -- Nats-Msg-Id
    reason      text        NOT NULL,  -- the database error
    sqlstate    text        NOT NULL DEFAULT '',
    data        bytea       NOT NULL,  -- the message payload (protobuf)
    UNIQUE (stream, stream_seq)
);

-- +goose Down
DROP TABLE parked_messages;
