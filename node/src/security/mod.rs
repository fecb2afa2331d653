//! Security of what the node keeps on its own host: private files and directories.
//! (Keys, certificates, trust and TLS join this folder with the node layout of issue 27.)

pub mod private_files;
