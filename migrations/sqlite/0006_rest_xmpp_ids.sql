-- Corrections (XEP-0308) written in a chat's room name the message they replace by its
-- XMPP id.
CREATE INDEX rest_messages_by_xmpp_id ON rest_messages (app_id, chat, xmpp_id);
