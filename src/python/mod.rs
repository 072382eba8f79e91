//! `lambdatorch._core`: thin PyO3 bindings over the core.
//!
//! Arguments are extracted while holding the GIL, then the work (decode, preprocessing, inference)
//! runs inside `py.detach` so other Python threads go on. numpy is touched only when the caller
//! passes or asks for arrays, so a handler that sends bytes never imports it. Errors become the
//! exception classes of `lambdatorch.errors` (pure Python, so they can inherit from both
//! `LambdaTorchError` and the standard base a user would catch).

use std::path::PathBuf;
use std::sync::Arc;

use ndarray::{Array, Axis, IxDyn};
use numpy::{
    IntoPyArray, PyArray4, PyArrayDescrMethods, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::error::{contain, Error, ErrorKind};
use crate::events;
use crate::image::ImageSource;
use crate::model::{Model, Prediction, TensorData, LIBTORCH_VERSION};
use crate::registry::Registry;
use crate::service::Service;

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        Python::attach(|py| match exception_class(py, err.kind()) {
            Ok(class) => PyErr::from_type(class, err.to_string()),
            Err(lookup) => lookup,
        })
    }
}

/// Runs `work` without the GIL; a panic in it becomes an `InferenceError` (PyO3 would raise
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
            .map_err(|err| Error::Inference(format!("internal: manifest to JSON: {err}")))?;
        py.import("json")?.call_method1("loads", (text,))
    }

    #[pyo3(signature = (image, top_k=None))]
    fn predict(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        top_k: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<PyPrediction>> {
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

    fn preprocess<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray4<f32>>> {
        let arg = ImageArg::extract(image)?;
        let source = arg.source()?;
        let model = &self.inner;
        let (tensor, _) = detached(py, || model.preprocess(&[source]))?;
        let [n, c, h, w] = tensor.shape[..] else {
            return Err(
                Error::Inference("internal: preprocess returned a non-4-D tensor".into()).into(),
            );
        };
        let array = Array::from_shape_vec((n, c, h, w), tensor.data)
            .map_err(|err| Error::Inference(format!("internal: {err}")))?;
        Ok(array.into_pyarray(py))
    }

    fn forward<'py>(
        &self,
        py: Python<'py>,
        array: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let array: PyReadonlyArrayDyn<'py, f32> = array.extract().map_err(|_| {
            Error::invalid_input(format!(
                "forward takes a float32 numpy array, got {}",
                describe_array(array)
            ))
        })?;
        let view = array.as_array();
        let model = &self.inner;
        model.check_tensor(view.shape())?;
        let output = detached(py, || {
            let input = TensorData::new(view.shape().to_vec(), view.iter().copied().collect())?;
            model.forward(&input)
        })?;
        let array = Array::from_shape_vec(IxDyn(&output.shape), output.data)
            .map_err(|err| Error::Inference(format!("internal: {err}")))?;
        Ok(array.into_pyarray(py))
    }

    fn __repr__(&self) -> String {
        format!("<lambdatorch.Model {:?}>", self.inner.name())
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
#[pyfunction]
fn handle<'py>(py: Python<'py>, event: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let event: serde_json::Value = pythonize::depythonize(event)
        .map_err(|err| Error::invalid_input(format!("the event is not JSON-like data: {err}")))?;
    let reply = detached(py, || {
        let outcome = events::handle(Service::global()?, event);
        // HTTP callers get a path-free message that points to the logs: this is that log line
        // (direct invokes raise, and the Python runtime logs the exception itself).
        if let (Err(err), true) = (&outcome.result, outcome.source.is_http()) {
            let line = serde_json::json!({
                "level": "WARN", "message": "request failed", "source": outcome.source.name(),
                "error_type": err.kind().name(), "error": err.to_string(),
            });
            eprintln!("{line}");
        }
        outcome.reply()
    })?;
    pythonize::pythonize(py, &reply)
        .map_err(|err| Error::Inference(format!("internal: response to Python: {err}")).into())
}

/// Loads the models of `LAMBDATORCH_PRELOAD` (the Python handler calls it during init).
#[pyfunction]
fn preload(py: Python<'_>) -> PyResult<()> {
    detached(py, || Service::global()?.preload())
}

/// Panics inside the binding boundary, as a bug would: lets tests check that a panic surfaces as
/// `InferenceError` and leaves the process and its models usable.
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
