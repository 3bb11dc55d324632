//! The data plane's side of the controller (node tunnels now, waypoints next):
//!
//! - [`ControllerEndpoint`]: where the controller is, the SPIFFE id it must present, the
//!   roots it chains to, and the projected token callers authenticate with;
//! - [`ControllerIssuer`]: the CA API as an [`ambit_identity::CertificateIssuer`];
//! - [`subscribe`]: the delta config stream, applied into a resource set that a caller turns
//!   into its model ([`mesh_config`] for an [`ambit_mesh::Mesh`]); ACKs naming the resources
//!   it could not read (left out alone), NACKs a delta it cannot use at all with the reason and
//!   keeps the last good set, reconnects with backoff and resumes from what it holds;
//! - [`source::start`]: how a data plane starts, from the controller or from files
//!   standalone, and [`source::spawn_feed`] for the models that follow.

mod ca;
mod convert;
mod endpoint;
pub mod source;
mod stream;

pub use ca::ControllerIssuer;
pub use convert::{ConvertError, Converted, mesh_config, route_model};
pub use endpoint::{ControllerEndpoint, EndpointError};
pub use source::{Feed, Issuer, Source, SourceError, Start};
pub use stream::{Resources, StreamState, subscribe};

/// Re-exported: callers name their subscription with these.
pub use ambit_proto::config::v1::{ServiceAccountRef, subscribe::Subscriber};
