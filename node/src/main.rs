//! The `meshwork` binary: the node daemon and its command line.
//!
//! Start at [`cli`] (the commands), then [`daemon`] (the node), [`store`] (durability).

mod bench;
mod cli;
mod client;
mod daemon;
mod home;
mod net;
mod output;
mod probe;
mod store;

fn main() {
    let cli = cli::parse();
    std::process::exit(cli::run(cli));
}
