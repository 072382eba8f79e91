//! `lambdatorch._core`: thin PyO3 bindings over the core.
//!
//! Arguments are extracted while holding the GIL, then the work (decode, preprocessing, inference)
//! runs inside `py.detach` so other Python threads go on. numpy is touched only when the caller
//! passes or asks for arrays, so a handler that sends bytes never imports it. Errors become the
//! exception classes of `lambdatorch.errors` (pure Python, so they can inherit from both
//! `LambdaTorchError` and the standard base a user would catch).

use std::path::PathBuf;
use std::sync::Arc;

use half::{bf16, f16};
use ndarray::{Array, Axis, IxDyn};
use numpy::{
    Element, IntoPyArray, PyArray2, PyArray4, PyArrayDescrMethods, PyReadonlyArrayDyn,
    PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyType};

use crate::error::{contain, Error, ErrorKind};
use crate::events;
use crate::image::ImageSource;
use crate::manifest::TextTensor;
use crate::model::{Model, TextAnswer, LIBTORCH_VERSION};
use crate::output::Prediction;
use crate::registry::Registry;
use crate::service::Service;
use crate::tensor::{DType, Elements, TensorData};
use crate::text::TextSource;

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        Python::attach(|py| match exception_class(py, err.kind()) {
            Ok(class) => PyErr::from_type(class, err.to_string()),
            // The original error must survive a broken `lambdatorch.errors`: raised as a
            // RuntimeError that names its type, with the failed lookup as its cause.
            Err(lookup) => {
                let raised = PyRuntimeError::new_err(format!("{}: {err}", err.kind().name()));
                raised.set_cause(py, Some(lookup));
                raised
            }
        })
    }
}

/// Runs `work` without the GIL; a panic in it becomes an `InternalError` (PyO3 would raise
/// `PanicException`, which is no `LambdaTorchError` and not even an `Exception`).
fn detached<T: Send>(
    py: Python<'_>,
    work: impl FnOnce() -> Result<T, Error> + Send,
) -> PyResult<T> {
    Ok(py.detach(|| contain(work))?)
}

/// The class of `lambdatorch.errors` for `kind`, looked up once per process.
fn exception_class(py: Python<'_>, kind: ErrorKind) -> PyResult<Bound<'_, PyType>> {
    static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let module =
        ERRORS.get_or_try_init(py, || py.import("lambdatorch.errors").map(Bound::unbind))?;
    Ok(module
        .bind(py)
        .getattr(kind.name())?
        .cast_into::<PyType>()?)
}

/// A prediction: class index, label (or `None`) and score.
#[pyclass(frozen, get_all, eq, name = "Prediction", module = "lambdatorch")]
#[derive(Clone, PartialEq)]
struct PyPrediction {
    index: usize,
    label: Option<String>,
    score: f64,
}

#[pymethods]
impl PyPrediction {
    #[new]
    #[pyo3(signature = (index, label, score))]
    fn new(index: usize, label: Option<String>, score: f64) -> Self {
        PyPrediction {
            index,
            label,
            score,
        }
    }

    fn __repr__(&self) -> String {
        // Python's repr of the label: single quotes, backslashes and quotes escaped.
        let label = self.label.as_deref().map_or("None".to_owned(), |l| {
            format!("'{}'", l.replace('\\', "\\\\").replace('\'', "\\'"))
        });
        format!(
            "Prediction(index={}, label={label}, score={:.6})",
            self.index, self.score
        )
    }
}

impl From<Prediction> for PyPrediction {
    fn from(p: Prediction) -> Self {
        PyPrediction {
            index: p.index,
            label: p.label,
            score: f64::from(p.score),
        }
    }
}

/// An image argument, held so that its bytes or pixels can be read without the GIL.
enum ImageArg<'py> {
    Bytes(PyBackedBytes),
    Array(PyReadonlyArrayDyn<'py, u8>),
}

impl<'py> ImageArg<'py> {
    fn extract(obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(bytes) = obj.extract::<PyBackedBytes>() {
            return Ok(ImageArg::Bytes(bytes));
        }
        let Ok(array) = obj.cast::<PyUntypedArray>() else {
            return Err(Error::invalid_input(format!(
                "expected an encoded image (bytes) or an HxWxC uint8 numpy array, got {}",
                obj.get_type().name()?
            ))
            .into());
        };
        if !matches!(array.ndim(), 2 | 3)
            || !array.dtype().is_equiv_to(&numpy::dtype::<u8>(obj.py()))
        {
            return Err(Error::invalid_input(format!(
                "expected an image array of shape (height, width) or (height, width, channels) \
                 and dtype uint8, got shape {:?} and dtype {}",
                array.shape(),
                array.dtype()
            ))
            .into());
        }
        Ok(ImageArg::Array(obj.extract()?))
    }

    fn source(&self) -> Result<ImageSource<'_>, Error> {
        match self {
            ImageArg::Bytes(bytes) => Ok(ImageSource::Encoded(bytes)),
            ImageArg::Array(array) => {
                let view = array.as_array();
                let view = if view.ndim() == 2 {
                    view.insert_axis(Axis(2))
                } else {
                    view
                };
                let view = view.into_dimensionality().map_err(|err| {
                    Error::invalid_input(format!("expected a 2-D or 3-D image array: {err}"))
                })?;
                Ok(ImageSource::Array(view))
            }
        }
    }
}

/// One text argument: `str`, UTF-8 `bytes`, or a `(first, second)` pair of them.
fn text_arg(obj: &Bound<'_, PyAny>) -> PyResult<TextSource> {
    fn one(obj: &Bound<'_, PyAny>) -> Result<String, Error> {
        if let Ok(text) = obj.cast::<PyString>() {
            // A str with lone surrogates has no UTF-8 form.
            return text.to_str().map(str::to_owned).map_err(|_| {
                Error::invalid_input("the text is not valid Unicode (it holds lone surrogates)")
            });
        }
        if let Ok(bytes) = obj.cast::<pyo3::types::PyBytes>() {
            return match TextSource::from_utf8(bytes.as_bytes().to_vec())? {
                TextSource::Single(text) => Ok(text),
                TextSource::Pair(..) => Err(Error::internal("text_arg", "a pair from bytes")),
            };
        }
        Err(Error::invalid_input(format!(
            "expected a text (str, or UTF-8 bytes), got {}",
            obj.get_type()
                .name()
                .map_or_else(|_| "an object".to_owned(), |n| n.to_string())
        )))
    }
    let is_pair =
        obj.is_instance_of::<pyo3::types::PyTuple>() || obj.is_instance_of::<pyo3::types::PyList>();
    if is_pair {
        let items: Vec<Bound<'_, PyAny>> = obj.extract()?;
        let [first, second] = &items[..] else {
            return Err(Error::invalid_input(format!(
                "a pair of texts has two items, got {}",
                items.len()
            ))
            .into());
        };
        return Ok(TextSource::Pair(one(first)?, one(second)?));
    }
    Ok(TextSource::Single(one(obj)?))
}

/// Text arguments of a batch; a lone `str` is a batch of one.
fn text_args(obj: &Bound<'_, PyAny>) -> PyResult<Vec<TextSource>> {
    if obj.is_instance_of::<PyString>() {
        return Ok(vec![text_arg(obj)?]);
    }
    let items: Vec<Bound<'_, PyAny>> = obj.extract().map_err(|_| {
        Error::invalid_input("expected a list of texts (str), or of pairs of texts")
    })?;
    items.iter().map(text_arg).collect()
}

/// A loaded model. Safe to share between threads.
#[pyclass(frozen, name = "Model", module = "lambdatorch")]
struct PyModel {
    inner: Arc<Model>,
}

#[pymethods]
impl PyModel {
    /// The model's name (its directory name).
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// The validated manifest, with defaults filled in, as a dict.
    #[getter]
    fn manifest<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = serde_json::to_string(self.inner.manifest())
            .map_err(|err| Error::internal("manifest to JSON", err))?;
        py.import("json")?.call_method1("loads", (text,))
    }

    #[pyo3(signature = (image, top_k=None))]
    fn predict(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        top_k: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<PyPrediction>> {
        if self.inner.input().text().is_some() {
            let text = text_arg(image)?;
            let mut batch = self.predict_texts(py, vec![text], top_k)?;
            return Ok(batch.pop().unwrap_or_default());
        }
        let mut batch = self.predict_batch(py, vec![image.clone()], top_k)?;
        Ok(batch.pop().unwrap_or_default())
    }

    #[pyo3(signature = (images, top_k=None))]
    fn predict_batch(
        &self,
        py: Python<'_>,
        images: Vec<Bound<'_, PyAny>>,
        top_k: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<Vec<PyPrediction>>> {
        if self.inner.input().text().is_some() {
            let texts = images.iter().map(text_arg).collect::<PyResult<Vec<_>>>()?;
            return self.predict_texts(py, texts, top_k);
        }
        let top_k = self.inner.limits().check_top_k(int_arg("top_k", top_k)?)?;
        let args = images
            .iter()
            .map(ImageArg::extract)
            .collect::<PyResult<Vec<_>>>()?;
        let sources = args
            .iter()
            .map(ImageArg::source)
            .collect::<Result<Vec<_>, _>>()?;
        let model = &self.inner;
        let (predictions, _timings) = detached(py, || model.predict(&sources, top_k))?;
        Ok(predictions
            .into_iter()
            .map(|row| row.into_iter().map(PyPrediction::from).collect())
            .collect())
    }

    /// One vector per text, `(N, dims)` float32 (embedding models).
    fn embed<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let texts = text_args(texts)?;
        let model = &self.inner;
        model.output().require_embedding(model.name())?;
        let (answer, _) = detached(py, || model.run_texts(&texts, None))?;
        let TextAnswer::Embeddings(embeddings) = answer else {
            return Err(Error::internal("embed", "an embedding model answered otherwise").into());
        };
        let array = Array::from_shape_vec((embeddings.batch, embeddings.dims), embeddings.data)
            .map_err(|err| Error::internal("embed", err))?;
        Ok(array.into_pyarray(py))
    }

    /// The int64 `(N, tokens)` arrays texts are tokenized into, by name.
    fn tokenize<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let texts = text_args(texts)?;
        let model = &self.inner;
        let tokens = detached(py, || model.tokenize(&texts))?;
        let dict = PyDict::new(py);
        for name in [
            TextTensor::InputIds,
            TextTensor::AttentionMask,
            TextTensor::TokenTypeIds,
        ] {
            let array =
                Array::from_shape_vec((tokens.batch, tokens.length), tokens.get(name).to_vec())
                    .map_err(|err| Error::internal("tokenize", err))?;
            dict.set_item(name.name(), array.into_pyarray(py))?;
        }
        Ok(dict)
    }

    fn preprocess<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray4<f32>>> {
        let arg = ImageArg::extract(image)?;
        let source = arg.source()?;
        let model = &self.inner;
        let (tensor, _) = detached(py, || model.preprocess(&[source]))?;
        let (&[n, c, h, w], Elements::Float32(data)) = (&tensor.shape[..], tensor.elements) else {
            return Err(Error::internal("preprocess", "not a 4-D float32 tensor").into());
        };
        let array = Array::from_shape_vec((n, c, h, w), data)
            .map_err(|err| Error::internal("preprocess", err))?;
        Ok(array.into_pyarray(py))
    }

    /// Runs the model on an array of its input dtype; returns the output in its own dtype.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        array: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let model = &self.inner;
        let dtype = model.input().dtype();
        let wrong = || {
            Error::invalid_input(format!(
                "model {:?}: forward takes a numpy array of dtype {}{}, got {}",
                model.name(),
                numpy_name(dtype),
                if dtype == DType::Bfloat16 {
                    " (the model's bfloat16, which numpy lacks)"
                } else {
                    ""
                },
                describe_array(array)
            ))
        };
        let untyped = array.cast::<PyUntypedArray>().map_err(|_| wrong())?;
        // Shape and size are checked before anything is copied.
        model.check_shape(untyped.shape())?;
        let shape = untyped.shape().to_vec();
        let elements = match dtype {
            DType::Float32 => Elements::Float32(copy_array(array).ok_or_else(wrong)?),
            DType::Float64 => Elements::Float64(copy_array(array).ok_or_else(wrong)?),
            DType::Float16 => Elements::Float16(copy_array(array).ok_or_else(wrong)?),
            DType::Bfloat16 => Elements::Bfloat16(
                copy_array::<f32>(array)
                    .ok_or_else(wrong)?
                    .into_iter()
                    .map(bf16::from_f32)
                    .collect(),
            ),
            DType::Int64 => Elements::Int64(copy_array(array).ok_or_else(wrong)?),
            DType::Int32 => Elements::Int32(copy_array(array).ok_or_else(wrong)?),
            DType::Uint8 => Elements::Uint8(copy_array(array).ok_or_else(wrong)?),
            DType::Bool => Elements::Bool(copy_array(array).ok_or_else(wrong)?),
        };
        let input = TensorData::new(shape, elements)?;
        let output = detached(py, || model.forward(&input))?;
        to_numpy(py, output)
    }

    fn __repr__(&self) -> String {
        format!("<lambdatorch.Model {:?}>", self.inner.name())
    }
}

impl PyModel {
    /// Classifies texts (text models' `predict` and `predict_batch`).
    fn predict_texts(
        &self,
        py: Python<'_>,
        texts: Vec<TextSource>,
        top_k: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<Vec<PyPrediction>>> {
        let model = &self.inner;
        let top_k = model.limits().check_top_k(int_arg("top_k", top_k)?)?;
        model.output().require_classification(model.name())?;
        let (answer, _) = detached(py, || model.run_texts(&texts, top_k))?;
        let TextAnswer::Predictions(rows) = answer else {
            return Err(Error::internal("predict", "a classifier answered otherwise").into());
        };
        Ok(rows
            .into_iter()
            .map(|row| row.into_iter().map(PyPrediction::from).collect())
            .collect())
    }
}

/// An optional integer argument; anything else (a str, a float, an int beyond 64 bits) is
/// `InvalidInput` rather than PyO3's `TypeError` or `OverflowError`.
fn int_arg(name: &str, value: Option<&Bound<'_, PyAny>>) -> Result<Option<i64>, Error> {
    value
        .filter(|v| !v.is_none())
        .map(|v| {
            v.extract::<i64>().map_err(|_| {
                Error::invalid_input(format!(
                    "{name} must be an integer, got {}",
                    v.repr().map_or_else(|_| "?".into(), |r| r.to_string())
                ))
            })
        })
        .transpose()
}

/// The elements of `array` if its dtype is `T`'s, copied in C order.
fn copy_array<T: Element + Copy>(array: &Bound<'_, PyAny>) -> Option<Vec<T>> {
    let array: PyReadonlyArrayDyn<'_, T> = array.extract().ok()?;
    Some(array.as_array().iter().copied().collect())
}

/// The numpy dtype that carries `dtype` in the Python API.
fn numpy_name(dtype: DType) -> &'static str {
    match dtype {
        DType::Bfloat16 => "float32",
        other => other.name(),
    }
}

/// A tensor as a numpy array of its dtype (bfloat16 as float32, which holds it exactly).
fn to_numpy(py: Python<'_>, tensor: TensorData) -> PyResult<Bound<'_, PyAny>> {
    fn array<'py, T: Element>(
        py: Python<'py>,
        shape: &[usize],
        data: Vec<T>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let array = Array::from_shape_vec(IxDyn(shape), data)
            .map_err(|err| Error::internal("output to numpy", err))?;
        Ok(array.into_pyarray(py).into_any())
    }
    let shape = &tensor.shape;
    match tensor.elements {
        Elements::Float32(v) => array(py, shape, v),
        Elements::Float64(v) => array(py, shape, v),
        Elements::Float16(v) => array::<f16>(py, shape, v),
        Elements::Bfloat16(v) => array(py, shape, v.into_iter().map(f32::from).collect()),
        Elements::Int64(v) => array(py, shape, v),
        Elements::Int32(v) => array(py, shape, v),
        Elements::Uint8(v) => array(py, shape, v),
        Elements::Bool(v) => array(py, shape, v),
    }
}

fn describe_array(obj: &Bound<'_, PyAny>) -> String {
    match obj.cast::<PyUntypedArray>() {
        Ok(array) => format!("an array of dtype {}", array.dtype()),
        Err(_) => obj
            .get_type()
            .name()
            .map_or_else(|_| "an object".to_owned(), |n| n.to_string()),
    }
}

/// Loads (once per process) the model at a directory or manifest path.
#[pyfunction]
fn load(py: Python<'_>, path: PathBuf) -> PyResult<PyModel> {
    let model = detached(py, || Registry::global().load(&path))?;
    Ok(PyModel { inner: model })
}

/// Runs one Lambda event through the service core (configured from the environment).
///
/// HTTP-style events always get a proxy response dict; direct invokes return the response dict
/// or raise the error, which the Python runtime reports with the class name as `errorType`.
///
/// `request_id` (the Lambda context's `aws_request_id`) goes into the request's log line, which
/// has the same fields as the native handler's.
#[pyfunction]
#[pyo3(signature = (event, request_id=None))]
fn handle<'py>(
    py: Python<'py>,
    event: &Bound<'py, PyAny>,
    request_id: Option<String>,
) -> PyResult<Bound<'py, PyAny>> {
    let event: serde_json::Value = pythonize::depythonize(event)
        .map_err(|err| Error::invalid_input(format!("the event is not JSON-like data: {err}")))?;
    let request_id = request_id.unwrap_or_default();
    let reply = detached(py, || {
        events::handle(Service::global()?, event, &request_id).into_reply()
    })?;
    pythonize::pythonize(py, &reply)
        .map_err(|err| Error::internal("response to Python", err).into())
}

/// Loads the models of `LAMBDATORCH_PRELOAD` (the Python handler calls it during init).
#[pyfunction]
fn preload(py: Python<'_>) -> PyResult<()> {
    detached(py, || Service::global()?.preload())
}

/// Panics inside the binding boundary, as a bug would: lets tests check that a panic surfaces as
/// `InternalError` and leaves the process and its models usable.
#[pyfunction]
fn _panic_for_tests(py: Python<'_>, message: String) -> PyResult<()> {
    detached(py, move || -> Result<(), Error> { panic!("{message}") })
}

/// Whether `name` is a valid model name (`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`).
#[pyfunction]
fn valid_model_name(name: &str) -> bool {
    crate::registry::is_valid_name(name)
}

/// The extension module.
#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    crate::logging::init();
    m.add_class::<PyModel>()?;
    m.add_class::<PyPrediction>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(valid_model_name, m)?)?;
    m.add_function(wrap_pyfunction!(handle, m)?)?;
    m.add_function(wrap_pyfunction!(preload, m)?)?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    m.add("LIBTORCH_VERSION", LIBTORCH_VERSION)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
