//! MQTT 3.1.1 wire format: framing through mqttbytes plus the validation it lacks, and the
//! topic name/filter rules.

pub mod codec;
pub mod topic;

pub use codec::{decode, Connect, Packet, ProtocolError, Will};
