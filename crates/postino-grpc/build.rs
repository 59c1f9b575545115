//! Compiles `proto/postino/v1/postino.proto` with protox (no protoc needed) into prost
//! messages and tonic services, server and client.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "../../proto";
    let file = "../../proto/postino/v1/postino.proto";
    println!("cargo:rerun-if-changed={file}");
    let descriptors = protox::compile([file], [root])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
