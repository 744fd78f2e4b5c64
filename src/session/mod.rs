//! Sessions: one task per connection, owning its socket.

pub mod c2s;
pub mod component;
pub mod conn;
pub mod s2s;
pub mod sm;
pub mod throttle;
