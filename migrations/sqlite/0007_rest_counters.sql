-- A new message raises its chat's counters to its own number and revision, in the statement
-- that inserts it (which took them as the chat's counters plus one): numbering is one
-- statement, with no other writer in between on SQLite's single writer.
CREATE TRIGGER rest_messages_counters AFTER INSERT ON rest_messages BEGIN
    UPDATE rest_chats SET messages_count = NEW.number, revision = NEW.revision
    WHERE app_id = NEW.app_id AND number = NEW.chat;
END;
