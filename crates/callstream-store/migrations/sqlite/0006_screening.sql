-- The screening phase: every call starts in it; its call.screening_ended event ends it, once.
ALTER TABLE calls ADD COLUMN screening_ended_at TEXT;
ALTER TABLE calls ADD COLUMN screening_msg TEXT;
