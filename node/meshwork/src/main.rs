//! The `meshwork` binary: the command line of the node and its clients.
//!
//! Start at [`cli`] (the commands). `init`, `node start` and `caps` run the daemon
//! (`meshwork-daemon`) in this process; every other command reaches the running node through
//! the typed client (`meshwork-client`). [`bench`] measures real node processes from outside.

mod bench;
mod cli;
mod output;

fn main() {
    let cli = cli::parse();
    std::process::exit(cli::run(cli));
}
