-- 0003: live gateway instances per SMSC (to split an account's rate between them).

CREATE TABLE gateway_instance (
    instance   text        NOT NULL,
    smsc       text        NOT NULL,
    last_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance, smsc)
);
