//! Tables about client sessions that other tasks read: the cancel keys
//! (`cancel`), which instance issued a key (`peer_key`), the cancels being
//! sent on to peers (`forwards`) and who is connected and what they are
//! doing (`registry`), and how many clients of each database and user are
//! logged in (`seats`), and the memory budget for large held messages
//! (`budget`).

pub mod budget;
pub mod cancel;
pub mod forwards;
pub mod peer_key;
pub mod registry;
pub mod seats;
