//! Tables about client sessions that other tasks read: the cancel keys
//! (`cancel`) and who is connected and what they are doing (`registry`).

pub mod cancel;
pub mod registry;
