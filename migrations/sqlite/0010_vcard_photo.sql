-- The SHA-1 of each vCard's photo (XEP-0153), kept beside it so that presence can carry it
-- without parsing the vCard: '' for a vCard without a photo, NULL for vCards stored before.
ALTER TABLE vcards ADD COLUMN photo_hash TEXT;
