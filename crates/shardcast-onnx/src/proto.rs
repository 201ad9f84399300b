//! The ONNX IR messages (`package onnx`), generated at build time from the
//! vendored `proto/onnx.proto` of ONNX 1.17.0 (see `proto/README.md`).
//!
//! The schema is proto2, so every scalar field is an `Option` (with a getter
//! of the same name that returns the default when it is absent) and
//! repeated numbers are written unpacked unless the schema says `packed`,
//! as the ONNX tools write them.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/onnx.rs"));

/// A readable name of a `TensorProto.DataType` value, for errors.
pub(crate) fn data_type_name(t: i32) -> &'static str {
    use tensor_proto::DataType as D;
    match D::try_from(t) {
        Ok(D::Float) => "float32",
        Ok(D::Uint8) => "uint8",
        Ok(D::Int8) => "int8",
        Ok(D::Uint16) => "uint16",
        Ok(D::Int16) => "int16",
        Ok(D::Int32) => "int32",
        Ok(D::Int64) => "int64",
        Ok(D::String) => "string",
        Ok(D::Bool) => "bool",
        Ok(D::Float16) => "float16",
        Ok(D::Double) => "float64",
        Ok(D::Uint32) => "uint32",
        Ok(D::Uint64) => "uint64",
        Ok(D::Bfloat16) => "bfloat16",
        Ok(_) => "other",
        Err(_) => "unknown",
    }
}

/// Bytes per element of the fixed-size data types, for checking `raw_data`.
pub(crate) fn data_type_size(t: i32) -> Option<usize> {
    use tensor_proto::DataType as D;
    Some(match D::try_from(t).ok()? {
        D::Bool | D::Uint8 | D::Int8 => 1,
        D::Uint16 | D::Int16 | D::Float16 | D::Bfloat16 => 2,
        D::Float | D::Int32 | D::Uint32 => 4,
        D::Double | D::Int64 | D::Uint64 => 8,
        _ => return None,
    })
}
