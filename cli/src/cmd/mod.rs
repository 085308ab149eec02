//! One module per subcommand; `admin` is the shared client side of the admin commands.

pub mod admin;
pub mod admin_issue;
pub mod agent;
pub mod bench;
pub mod cluster;
pub mod completions;
pub mod config;
pub mod demo;
pub mod drain;
pub mod driver;
pub mod driver_check;
pub mod landing;
pub mod node;
pub mod rules;
pub mod sessions;
pub mod simulate;
pub mod status;
pub mod vm;
pub mod vm_adopt;
pub mod vm_move;
