//! Sessions: one task per connection, owning its socket.

pub mod c2s;
pub mod conn;
