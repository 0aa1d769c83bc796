//! The bench's baseline: a tonic server with nothing but grpc.health.v1, on
//! the same transport settings authgate serves with (HTTP/2 over plain TCP,
//! TCP_NODELAY on, a multi-threaded runtime) and no auth, limits, layers or
//! metrics. authgate's own health check is the same RPC, so the gap between
//! the two is what authgate's middleware costs.

use std::net::SocketAddr;

use clap::Parser;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

/// authgate's allocator, so that the gap measured is its middleware's and
/// not a difference of allocators.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "A bare tonic server with one empty unary RPC, for authgate-bench")]
struct Args {
    /// Where to listen; port 0 picks a free one. The bound address is the
    /// first line on stdout, for scripts that start this on port 0.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // Bound before the address is printed, so a client that read it finds
    // the port open.
    let incoming = TcpIncoming::bind(args.listen)?.with_nodelay(Some(true));
    println!("{}", incoming.local_addr()?);
    let (_reporter, health) = tonic_health::server::health_reporter();
    Server::builder()
        .add_service(health)
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
