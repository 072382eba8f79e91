//! Tensors crossing the API boundary, in their own dtype.
//!
//! A request's tensor, a `forward` argument and a model's output keep the element type the
//! manifest names: int64 token ids above 2^24 arrive intact, and a uint8 or bool output is not
//! turned into floats. JSON numbers are checked for range and integrality on the way in; on the
//! way out floats print as the shortest decimal that round-trips their own precision. What goes
//! to and from libtorch is [`TensorData::to_torch`] and [`TensorData::from_torch`].

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Element types a tensor input or output may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    #[default]
    Float32,
    /// 64-bit float.
    Float64,
    /// IEEE half precision.
    Float16,
    /// bfloat16 (numpy has no such dtype: the Python API carries it as float32, which holds
    /// every bfloat16 value exactly).
    Bfloat16,
    /// 64-bit signed integer (token ids, indices).
    Int64,
    /// 32-bit signed integer.
    Int32,
    /// 8-bit unsigned integer.
    Uint8,
    /// Boolean (masks).
    Bool,
}

impl DType {
    /// The name in manifests and responses.
    pub fn name(self) -> &'static str {
        match self {
            DType::Float32 => "float32",
            DType::Float64 => "float64",
            DType::Float16 => "float16",
            DType::Bfloat16 => "bfloat16",
            DType::Int64 => "int64",
            DType::Int32 => "int32",
            DType::Uint8 => "uint8",
            DType::Bool => "bool",
        }
    }

    fn kind(self) -> tch::Kind {
        match self {
            DType::Float32 => tch::Kind::Float,
            DType::Float64 => tch::Kind::Double,
            DType::Float16 => tch::Kind::Half,
            DType::Bfloat16 => tch::Kind::BFloat16,
            DType::Int64 => tch::Kind::Int64,
            DType::Int32 => tch::Kind::Int,
            DType::Uint8 => tch::Kind::Uint8,
            DType::Bool => tch::Kind::Bool,
        }
    }

    fn of_kind(kind: tch::Kind) -> Option<DType> {
        Some(match kind {
            tch::Kind::Float => DType::Float32,
            tch::Kind::Double => DType::Float64,
            tch::Kind::Half => DType::Float16,
            tch::Kind::BFloat16 => DType::Bfloat16,
            tch::Kind::Int64 => DType::Int64,
            tch::Kind::Int => DType::Int32,
            tch::Kind::Uint8 => DType::Uint8,
            tch::Kind::Bool => DType::Bool,
            _ => return None,
        })
    }
}

/// The elements of a tensor, row-major, in their dtype.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // one variant per dtype, named after it
pub enum Elements {
    Float32(Vec<f32>),
    Float64(Vec<f64>),
    Float16(Vec<f16>),
    Bfloat16(Vec<bf16>),
    Int64(Vec<i64>),
    Int32(Vec<i32>),
    Uint8(Vec<u8>),
    Bool(Vec<bool>),
}

/// Runs `$body` with `$v` bound to the typed vector inside an [`Elements`].
macro_rules! each_dtype {
    ($elements:expr, $v:ident => $body:expr) => {
        match $elements {
            Elements::Float32($v) => $body,
            Elements::Float64($v) => $body,
            Elements::Float16($v) => $body,
            Elements::Bfloat16($v) => $body,
            Elements::Int64($v) => $body,
            Elements::Int32($v) => $body,
            Elements::Uint8($v) => $body,
            Elements::Bool($v) => $body,
        }
    };
}

/// The [`Elements`] of the same dtype that `$body` makes of the typed vector `$v` inside.
macro_rules! map_dtype {
    ($elements:expr, $v:ident => $body:expr) => {
        match $elements {
            Elements::Float32($v) => Elements::Float32($body),
            Elements::Float64($v) => Elements::Float64($body),
            Elements::Float16($v) => Elements::Float16($body),
            Elements::Bfloat16($v) => Elements::Bfloat16($body),
            Elements::Int64($v) => Elements::Int64($body),
            Elements::Int32($v) => Elements::Int32($body),
            Elements::Uint8($v) => Elements::Uint8($body),
            Elements::Bool($v) => Elements::Bool($body),
        }
    };
}

impl Elements {
    /// Their dtype.
    pub fn dtype(&self) -> DType {
        match self {
            Elements::Float32(_) => DType::Float32,
            Elements::Float64(_) => DType::Float64,
            Elements::Float16(_) => DType::Float16,
            Elements::Bfloat16(_) => DType::Bfloat16,
            Elements::Int64(_) => DType::Int64,
            Elements::Int32(_) => DType::Int32,
            Elements::Uint8(_) => DType::Uint8,
            Elements::Bool(_) => DType::Bool,
        }
    }

    /// How many.
    pub fn len(&self) -> usize {
        each_dtype!(self, v => v.len())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The index and value of the first NaN or infinity, for float dtypes.
    pub fn first_non_finite(&self) -> Option<(usize, f64)> {
        let find = |values: &mut dyn Iterator<Item = f64>| {
            values.enumerate().find(|(_, v)| !v.is_finite())
        };
        match self {
            Elements::Float32(v) => find(&mut v.iter().map(|&x| f64::from(x))),
            Elements::Float64(v) => find(&mut v.iter().copied()),
            Elements::Float16(v) => find(&mut v.iter().map(|&x| x.to_f64())),
            Elements::Bfloat16(v) => find(&mut v.iter().map(|&x| x.to_f64())),
            _ => None,
        }
    }

    /// The values as float32, for scores (softmax, top-k).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Elements::Float32(v) => v.clone(),
            Elements::Float64(v) => v.iter().map(|&x| x as f32).collect(),
            Elements::Float16(v) => v.iter().map(|&x| x.to_f32()).collect(),
            Elements::Bfloat16(v) => v.iter().map(|&x| x.to_f32()).collect(),
            Elements::Int64(v) => v.iter().map(|&x| x as f32).collect(),
            Elements::Int32(v) => v.iter().map(|&x| x as f32).collect(),
            Elements::Uint8(v) => v.iter().map(|&x| f32::from(x)).collect(),
            Elements::Bool(v) => v.iter().map(|&x| f32::from(u8::from(x))).collect(),
        }
    }
}

/// A dense tensor crossing the API boundary: shape and row-major elements.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// `shape.iter().product()` elements.
    pub elements: Elements,
}

/// `shape`'s element count, or `None` if it overflows.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// `InvalidInput` unless `len` elements fill `shape` exactly.
pub fn check_fills(shape: &[usize], len: usize) -> Result<()> {
    let expected = element_count(shape);
    if expected != Some(len) {
        return Err(Error::invalid_input(format!(
            "tensor shape {shape:?} needs {} elements, got {len}",
            expected.map_or_else(|| "too many".to_owned(), |n| n.to_string()),
        )));
    }
    Ok(())
}

impl TensorData {
    /// Checks that `elements` fill `shape`.
    pub fn new(shape: Vec<usize>, elements: Elements) -> Result<Self> {
        check_fills(&shape, elements.len())?;
        Ok(TensorData { shape, elements })
    }

    /// Their dtype.
    pub fn dtype(&self) -> DType {
        self.elements.dtype()
    }

    /// A libtorch tensor holding a copy of the elements. Allocated empty and copied into here:
    /// tch's `from_slice` zero-fills first, in parallel, which gives the calling thread an
    /// OpenMP team of its own (see `Model::load` for what that costs).
    pub fn to_torch(&self) -> Result<tch::Tensor> {
        let shape: Vec<i64> = self.shape.iter().map(|&d| d as i64).collect();
        let tensor = tch::Tensor::f_empty(&shape, (self.dtype().kind(), tch::Device::Cpu))
            .map_err(|err| Error::internal("tensor to libtorch", err))?;
        // Every element type here is plain data of the size libtorch gives its dtype.
        let bytes = each_dtype!(&self.elements, v => std::mem::size_of_val(v.as_slice()));
        let source = each_dtype!(&self.elements, v => v.as_ptr().cast::<u8>());
        if bytes != tensor.numel() * self.dtype().kind().elt_size_in_bytes() {
            return Err(Error::internal(
                "tensor to libtorch",
                "shape and elements disagree",
            ));
        }
        if bytes > 0 {
            // SAFETY: `tensor` is new, contiguous and `bytes` long (checked above), and nothing
            // else references it; `source` points at `bytes` bytes of the elements.
            unsafe {
                std::ptr::copy_nonoverlapping(source, tensor.data_ptr().cast::<u8>(), bytes);
            }
        }
        Ok(tensor)
    }

    /// Copies a libtorch tensor out, in its own dtype; `None` for dtypes outside [`DType`].
    pub fn from_torch(tensor: &tch::Tensor) -> Result<Option<TensorData>> {
        let Some(dtype) = DType::of_kind(tensor.kind()) else {
            return Ok(None);
        };
        let shape: Vec<usize> = tensor.size().iter().map(|&d| d as usize).collect();
        let flat = tensor
            .f_contiguous()
            .and_then(|t| t.f_reshape([-1]))
            .map_err(|err| Error::internal("tensor from libtorch", err))?;
        let copy = |err| Error::internal("tensor from libtorch", err);
        let elements = match dtype {
            DType::Float32 => Elements::Float32(Vec::try_from(&flat).map_err(copy)?),
            DType::Float64 => Elements::Float64(Vec::try_from(&flat).map_err(copy)?),
            DType::Float16 => Elements::Float16(Vec::try_from(&flat).map_err(copy)?),
            DType::Bfloat16 => {
                // As in `to_torch`: through the bits, which tch copies faithfully.
                let bits = flat.f_view_dtype(tch::Kind::Int16).map_err(copy)?;
                let bits: Vec<i16> = Vec::try_from(&bits).map_err(copy)?;
                Elements::Bfloat16(
                    bits.into_iter()
                        .map(|b| bf16::from_bits(b as u16))
                        .collect(),
                )
            }
            DType::Int64 => Elements::Int64(Vec::try_from(&flat).map_err(copy)?),
            DType::Int32 => Elements::Int32(Vec::try_from(&flat).map_err(copy)?),
            DType::Uint8 => Elements::Uint8(Vec::try_from(&flat).map_err(copy)?),
            DType::Bool => Elements::Bool(Vec::try_from(&flat).map_err(copy)?),
        };
        TensorData::new(shape, elements).map(Some)
    }

    /// Splits the batch dimension into parts of `rows` rows each (which must add up to it).
    pub fn split_rows(self, rows: &[usize]) -> Result<Vec<TensorData>> {
        let total: usize = rows.iter().sum();
        let (&first, rest) = self.shape.split_first().unwrap_or((&0, &[]));
        if first != total {
            return Err(Error::internal(
                "batch",
                format!("the output has {first} rows for {total} inputs"),
            ));
        }
        let per_row = element_count(rest).unwrap_or(0);
        let mut parts = Vec::with_capacity(rows.len());
        let mut start = 0;
        for &n in rows {
            let range = start * per_row..(start + n) * per_row;
            let elements = map_dtype!(&self.elements, v => v[range].to_vec());
            let shape = std::iter::once(n).chain(rest.iter().copied()).collect();
            parts.push(TensorData::new(shape, elements)?);
            start += n;
        }
        Ok(parts)
    }

    /// Positions `start..start + len` of dimension 1 of a `[rows, length, ...]` tensor: a
    /// request's own tokens, when its output came back padded to a longer batch's.
    pub fn narrow_dim1(self, start: usize, len: usize) -> Result<TensorData> {
        let (rows, length, inner) = match &self.shape[..] {
            [rows, length, rest @ ..] => (*rows, *length, element_count(rest).unwrap_or(0)),
            _ => return Err(Error::internal("narrow", format!("shape {:?}", self.shape))),
        };
        if start + len > length {
            return Err(Error::internal(
                "narrow",
                format!("positions {start}..{} of {length}", start + len),
            ));
        }
        let elements = map_dtype!(&self.elements, v => (0..rows)
            .flat_map(|row| {
                let at = (row * length + start) * inner;
                v[at..at + len * inner].iter().copied()
            })
            .collect());
        let mut shape = self.shape;
        shape[1] = len;
        TensorData::new(shape, elements)
    }

    /// A tensor of `shape` filled with zeros (false), for warmup.
    pub fn zeros(shape: Vec<usize>, dtype: DType) -> Result<TensorData> {
        let n = element_count(&shape)
            .ok_or_else(|| Error::internal("zeros", format!("shape {shape:?} overflows")))?;
        let elements = match dtype {
            DType::Float32 => Elements::Float32(vec![0.0; n]),
            DType::Float64 => Elements::Float64(vec![0.0; n]),
            DType::Float16 => Elements::Float16(vec![f16::ZERO; n]),
            DType::Bfloat16 => Elements::Bfloat16(vec![bf16::ZERO; n]),
            DType::Int64 => Elements::Int64(vec![0; n]),
            DType::Int32 => Elements::Int32(vec![0; n]),
            DType::Uint8 => Elements::Uint8(vec![0; n]),
            DType::Bool => Elements::Bool(vec![false; n]),
        };
        TensorData::new(shape, elements)
    }

    /// Converts JSON scalars to `dtype`, refusing values it cannot hold exactly: fractions and
    /// out-of-range numbers for integers, overflow to infinity for floats, anything but
    /// true/false/0/1 for bool. Floats round to the nearest value of their precision, as
    /// `torch.tensor(..., dtype=...)` does.
    pub fn from_json(shape: Vec<usize>, values: &[Scalar], dtype: DType) -> Result<TensorData> {
        let bad = |i: usize, value: &Scalar, why: &str| {
            Error::invalid_input(format!(
                "tensor.data[{i}] is {value}, which {why} {}",
                dtype.name()
            ))
        };
        fn convert<T>(
            values: &[Scalar],
            mut each: impl FnMut(usize, &Scalar) -> Result<T>,
        ) -> Result<Vec<T>> {
            values.iter().enumerate().map(|(i, v)| each(i, v)).collect()
        }
        let float = |i: usize, v: &Scalar| -> Result<f64> {
            match *v {
                Scalar::Bool(_) => Err(bad(i, v, "is not a number for")),
                _ => Ok(v.as_f64()),
            }
        };
        let finite = |i: usize, v: &Scalar, x: f64| -> Result<f64> {
            if x.is_finite() {
                Ok(x)
            } else {
                Err(bad(i, v, "is out of range for"))
            }
        };
        let integer = |i: usize, v: &Scalar, min: i128, max: i128| -> Result<i128> {
            let n = match *v {
                Scalar::Int(n) => i128::from(n),
                Scalar::UInt(n) => i128::from(n),
                Scalar::Float(x) if x.fract() == 0.0 && x.abs() < 2f64.powi(127) => x as i128,
                Scalar::Float(_) => return Err(bad(i, v, "is not an integer, as needed for")),
                Scalar::Bool(_) => return Err(bad(i, v, "is not a number for")),
            };
            if n < min || n > max {
                return Err(bad(i, v, "is out of range for"));
            }
            Ok(n)
        };
        let elements = match dtype {
            DType::Float32 => Elements::Float32(convert(values, |i, v| {
                let x = float(i, v)?;
                Ok(finite(i, v, f64::from(x as f32))? as f32)
            })?),
            DType::Float64 => Elements::Float64(convert(values, float)?),
            DType::Float16 => Elements::Float16(convert(values, |i, v| {
                let x = f16::from_f64(float(i, v)?);
                finite(i, v, x.to_f64()).map(|_| x)
            })?),
            DType::Bfloat16 => Elements::Bfloat16(convert(values, |i, v| {
                let x = bf16::from_f64(float(i, v)?);
                finite(i, v, x.to_f64()).map(|_| x)
            })?),
            DType::Int64 => Elements::Int64(convert(values, |i, v| {
                integer(i, v, i64::MIN.into(), i64::MAX.into()).map(|n| n as i64)
            })?),
            DType::Int32 => Elements::Int32(convert(values, |i, v| {
                integer(i, v, i32::MIN.into(), i32::MAX.into()).map(|n| n as i32)
            })?),
            DType::Uint8 => Elements::Uint8(convert(values, |i, v| {
                integer(i, v, 0, 255).map(|n| n as u8)
            })?),
            DType::Bool => Elements::Bool(convert(values, |i, v| match *v {
                Scalar::Bool(b) => Ok(b),
                _ => integer(i, v, 0, 1).map(|n| n == 1),
            })?),
        };
        TensorData::new(shape, elements)
    }
}

/// One JSON scalar of a tensor request, kept as written until the model's dtype is known.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    /// A negative integer, or any integer that fits i64.
    Int(i64),
    /// A positive integer beyond i64.
    UInt(u64),
    /// A number with a fraction or exponent.
    Float(f64),
    /// `true` or `false`.
    Bool(bool),
}

impl Scalar {
    fn as_f64(self) -> f64 {
        match self {
            Scalar::Int(n) => n as f64,
            Scalar::UInt(n) => n as f64,
            Scalar::Float(x) => x,
            Scalar::Bool(b) => f64::from(u8::from(b)),
        }
    }
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Int(n) => write!(f, "{n}"),
            Scalar::UInt(n) => write!(f, "{n}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number or a boolean")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(i64::try_from(v).map_or(Scalar::UInt(v), Scalar::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Float(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `value` as the f64 nearest to its shortest round-tripping decimal (0.8731f32 becomes 0.8731,
/// not 0.873100042...): JSON responses then read as the float32 values they are.
pub fn short_f64(value: f32) -> f64 {
    if !value.is_finite() {
        return f64::from(value);
    }
    ryu::Buffer::new()
        .format_finite(value)
        .parse()
        .unwrap_or(f64::from(value))
}

/// The decimal with the fewest significant digits that `round_trips` back to the same value.
fn shortest(value: f64, round_trips: impl Fn(f64) -> bool) -> f64 {
    if !value.is_finite() {
        return value;
    }
    (1..17)
        .filter_map(|digits| format!("{value:.*e}", digits - 1).parse::<f64>().ok())
        .find(|&candidate| round_trips(candidate))
        .unwrap_or(value)
}

impl Serialize for Elements {
    /// Floats as the shortest decimals of their own precision, integers exactly, bools as
    /// `true`/`false`. JSON has no NaN or infinity: callers check [`Elements::first_non_finite`].
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Elements::Float32(v) => s.collect_seq(v.iter().map(|&x| short_f64(x))),
            Elements::Float64(v) => s.collect_seq(v),
            Elements::Float16(v) => s.collect_seq(
                v.iter()
                    .map(|&x| shortest(x.to_f64(), |y| f16::from_f64(y) == x)),
            ),
            Elements::Bfloat16(v) => s.collect_seq(
                v.iter()
                    .map(|&x| shortest(x.to_f64(), |y| bf16::from_f64(y) == x)),
            ),
            Elements::Int64(v) => s.collect_seq(v),
            Elements::Int32(v) => s.collect_seq(v),
            Elements::Uint8(v) => s.collect_seq(v),
            Elements::Bool(v) => s.collect_seq(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_dim1_keeps_each_rows_positions() -> Result<()> {
        // [2 rows, 3 positions, 2 values]
        let data = TensorData::new(vec![2, 3, 2], Elements::Int64((0..12).collect()))?;
        let cut = data.clone().narrow_dim1(1, 2)?;
        assert_eq!(cut.shape, vec![2, 2, 2]);
        assert_eq!(
            cut.elements,
            Elements::Int64(vec![2, 3, 4, 5, 8, 9, 10, 11])
        );
        assert!(data.clone().narrow_dim1(2, 2).is_err());
        let flat = TensorData::new(vec![3], Elements::Int64(vec![1, 2, 3]))?;
        assert!(flat.narrow_dim1(0, 1).is_err());
        Ok(())
    }

    #[test]
    fn short_f64_is_the_shortest_decimal_that_round_trips() {
        assert_eq!(short_f64(0.8731), 0.8731);
        assert_eq!(short_f64(1e-7), 1e-7);
        assert_eq!(short_f64(-3.0e38), -3.0e38);
        assert!(short_f64(f32::NAN).is_nan());
        // Against the standard library's shortest formatting, on a spread of bit patterns: as
        // many digits, the same decimal but where two are equally near (2.00390625 exactly:
        // ryu rounds half to even, 2.0039062, as numpy prints it; std gives 2.0039063).
        for bits in (0..u32::MAX).step_by(65_537) {
            let value = f32::from_bits(bits);
            if value.is_finite() {
                let (ours, std) = (short_f64(value), value.to_string().parse::<f64>());
                assert_eq!(ours as f32, value);
                if Ok(ours) != std {
                    let std = std.unwrap_or_default();
                    assert_eq!(ours.to_string().len(), std.to_string().len(), "{value:e}");
                    assert_eq!(f64::from(value), (ours + std) / 2.0, "{value:e}: not a tie");
                }
            }
        }
    }

    fn scalars(json: &str) -> Vec<Scalar> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn integers_arrive_exactly() -> Result<()> {
        let big = (1i64 << 53) + 1;
        let t = TensorData::from_json(vec![2], &scalars(&format!("[{big}, -3]")), DType::Int64)?;
        assert_eq!(t.elements, Elements::Int64(vec![big, -3]));
        let t = TensorData::from_json(vec![2], &scalars("[2.0, 255]"), DType::Uint8)?;
        assert_eq!(t.elements, Elements::Uint8(vec![2, 255]));
        let t = TensorData::from_json(vec![3], &scalars("[true, 0, 1]"), DType::Bool)?;
        assert_eq!(t.elements, Elements::Bool(vec![true, false, true]));
        Ok(())
    }

    #[test]
    fn values_a_dtype_cannot_hold_are_refused() {
        let err = |json: &str, dtype| {
            TensorData::from_json(vec![1], &scalars(json), dtype)
                .unwrap_err()
                .to_string()
        };
        assert!(err("[1.5]", DType::Int64).contains("not an integer"));
        assert!(err("[256]", DType::Uint8).contains("out of range for uint8"));
        assert!(err("[-1]", DType::Uint8).contains("out of range"));
        assert!(err("[2147483648]", DType::Int32).contains("out of range for int32"));
        assert!(err("[18446744073709551615]", DType::Int64).contains("out of range"));
        assert!(err("[1e39]", DType::Float32).contains("out of range for float32"));
        assert!(err("[70000]", DType::Float16).contains("out of range for float16"));
        assert!(err("[2]", DType::Bool).contains("out of range for bool"));
        assert!(err("[true]", DType::Float32).contains("not a number"));
    }

    #[test]
    fn floats_print_in_their_own_precision() -> Result<()> {
        let t = TensorData::from_json(vec![2], &scalars("[0.1, 1e-3]"), DType::Float16)?;
        let json = serde_json::to_string(&t.elements).unwrap_or_default();
        assert_eq!(json, "[0.1,0.001]");
        let t = TensorData::from_json(vec![1], &scalars("[0.8731]"), DType::Float32)?;
        assert_eq!(
            serde_json::to_string(&t.elements).ok().as_deref(),
            Some("[0.8731]")
        );
        Ok(())
    }

    #[test]
    fn torch_round_trips_every_dtype() -> Result<()> {
        for dtype in [
            DType::Float32,
            DType::Float64,
            DType::Float16,
            DType::Bfloat16,
            DType::Int64,
            DType::Int32,
            DType::Uint8,
            DType::Bool,
        ] {
            let t = TensorData::from_json(vec![2, 2], &scalars("[0, 1, 1, 0]"), dtype)?;
            let torch = t.to_torch()?;
            // The values libtorch sees, not only the bits that come back.
            let sum = torch
                .f_sum(tch::Kind::Double)
                .and_then(|s| s.f_double_value(&[]));
            assert_eq!(sum.ok(), Some(2.0), "{dtype:?}");
            let back = TensorData::from_torch(&torch)?;
            assert_eq!(back.as_ref(), Some(&t), "{dtype:?}");
        }
        Ok(())
    }
}
