//! Duet's gRPC contract, package `duet.v1`: the generated messages, clients and servers of the
//! drafter, verifier and orchestrator services (`proto/duet/v1/*.proto`, where every field is
//! documented), and the encoded descriptor set for server reflection. Nothing else lives here.

/// Package `duet.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("duet.v1");
}

/// The encoded `FileDescriptorSet` of `duet.v1`, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("duet_v1_descriptor");
