//! Security: the trust rules applied to every certificate (`trust`) and what the node keeps
//! on its own host (`private_files`: keys and data files 0600, directories 0700).

pub mod private_files;
pub mod trust;
