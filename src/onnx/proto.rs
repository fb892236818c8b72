//! The subset of ONNX's protobuf schema that modelpress reads and writes, as `prost` messages.
//!
//! Field numbers and types are those of `onnx/onnx.proto` (ONNX 1.23, IR version 14,
//! SPDX-License-Identifier: Apache-2.0, Copyright (c) ONNX Project Contributors), in proto3 form
//! (scalars are plain values, repeated numbers packed; prost decodes packed and unpacked alike).
//! Messages and fields modelpress never uses (training info, functions, sparse tensors,
//! sequence/map types, device configurations) are left out: protobuf decoders skip unknown
//! fields, so files that carry them still parse.
//!
//! Why hand-written derives instead of code generated in a `build.rs` (prost-build + protox, or
//! rust-protobuf's pure codegen, see `shared/ONNX.md`): generated code for these messages is
//! exactly these derives, and writing them out removes the build script, the .proto compiler
//! (protox adds ~30 crates) and a file the Dockerfile would have to copy. The price is that a
//! field number could be mistyped; the Python round-trip (`scripts/onnx_roundtrip.sh`, the
//! `onnx` checker and ONNX Runtime read our files, we read theirs) guards against that.
//!
//! Byte fields are `bytes::Bytes`: decoding from a `Bytes` buffer (an mmap wrapped with
//! `Bytes::from_owner`) slices `raw_data` without copying.

use bytes::Bytes;

/// `onnx.TensorProto.DataType` values used here.
pub mod data_type {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const FLOAT16: i32 = 10;
    pub const DOUBLE: i32 = 11;
    pub const BFLOAT16: i32 = 16;
}

/// `onnx.AttributeProto.AttributeType` values used here.
pub mod attr_type {
    pub const FLOAT: i32 = 1;
    pub const INT: i32 = 2;
    pub const STRING: i32 = 3;
    pub const TENSOR: i32 = 4;
    pub const FLOATS: i32 = 6;
    pub const INTS: i32 = 7;
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "4")]
    pub domain: String,
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(string, tag = "10")]
    pub doc_string: String,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(string, tag = "7")]
    pub domain: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "6")]
    pub doc_string: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "21")]
    pub ref_attr_name: String,
    #[prost(int32, tag = "20")]
    pub r#type: i32,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(bytes = "bytes", tag = "4")]
    pub s: Bytes,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    #[prost(string, tag = "3")]
    pub doc_string: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TypeProtoTensor>,
    #[prost(string, tag = "6")]
    pub denotation: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProtoTensor {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Dimension {
    #[prost(oneof = "DimValue", tags = "1, 2")]
    pub value: Option<DimValue>,
    #[prost(string, tag = "3")]
    pub denotation: String,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum DimValue {
    #[prost(int64, tag = "1")]
    DimValue(i64),
    #[prost(string, tag = "2")]
    DimParam(String),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(string, tag = "12")]
    pub doc_string: String,
    #[prost(bytes = "bytes", tag = "9")]
    pub raw_data: Bytes,
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    /// 0 = default (data in this message), 1 = external.
    #[prost(int32, tag = "14")]
    pub data_location: i32,
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    #[prost(uint64, repeated, tag = "11")]
    pub uint64_data: Vec<u64>,
}

impl TensorProto {
    /// A tensor of little-endian raw bytes.
    pub fn raw(name: impl Into<String>, data_type: i32, dims: &[usize], raw_data: Bytes) -> TensorProto {
        TensorProto {
            name: name.into(),
            data_type,
            dims: dims.iter().map(|&d| d as i64).collect(),
            raw_data,
            ..Default::default()
        }
    }

    /// An f32 tensor.
    pub fn f32(name: impl Into<String>, dims: &[usize], values: &[f32]) -> TensorProto {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::raw(name, data_type::FLOAT, dims, Bytes::from(bytes))
    }

    /// An i64 tensor.
    pub fn i64(name: impl Into<String>, dims: &[usize], values: &[i64]) -> TensorProto {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::raw(name, data_type::INT64, dims, Bytes::from(bytes))
    }
}

impl AttributeProto {
    pub fn int(name: &str, i: i64) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: attr_type::INT, i, ..Default::default() }
    }
    pub fn float(name: &str, f: f32) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: attr_type::FLOAT, f, ..Default::default() }
    }
    pub fn ints(name: &str, ints: &[i64]) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: attr_type::INTS, ints: ints.to_vec(), ..Default::default() }
    }
    pub fn string(name: &str, s: &str) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: attr_type::STRING,
            s: Bytes::copy_from_slice(s.as_bytes()),
            ..Default::default()
        }
    }
    pub fn tensor(name: &str, t: TensorProto) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: attr_type::TENSOR, t: Some(t), ..Default::default() }
    }
}

impl NodeProto {
    /// A node of the default domain.
    pub fn new(op_type: &str, name: impl Into<String>, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: op_type.into(),
            name: name.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Adds an attribute.
    pub fn with(mut self, a: AttributeProto) -> NodeProto {
        self.attribute.push(a);
        self
    }
}

impl ValueInfoProto {
    /// A tensor value of `elem_type` whose first dim is the symbolic batch `N`.
    pub fn batched(name: &str, elem_type: i32, per_sample: &[usize]) -> ValueInfoProto {
        let mut dim = vec![Dimension { value: Some(DimValue::DimParam("N".into())), denotation: String::new() }];
        dim.extend(
            per_sample
                .iter()
                .map(|&d| Dimension { value: Some(DimValue::DimValue(d as i64)), denotation: String::new() }),
        );
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TypeProtoTensor { elem_type, shape: Some(TensorShapeProto { dim }) }),
                denotation: String::new(),
            }),
            doc_string: String::new(),
        }
    }
}
