// The AOTInductor shim: a C interface over libtorch's torch::inductor::AOTIModelPackageLoader,
// for src/backend/aoti.rs. The only C++ in lambdatorch.
//
// Tensors cross as tch's tensors do (an `at::Tensor*` the receiver owns). No C++ exception
// leaves this file: each one becomes an error string (malloc'd; the caller frees it with
// lt_aoti_free_string), so a model that throws is an error, never an abort.

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

namespace {

char* copy_string(const std::string& text) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, text.c_str(), text.size() + 1);
  }
  return out;
}

// Runs `body`, turning any exception into an error string in `*err`; returns whether it ran
// through.
template <typename F>
bool guarded(char** err, F&& body) {
  try {
    body();
    return true;
  } catch (const c10::Error& e) {
    *err = copy_string(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = copy_string(e.what());
  } catch (...) {
    *err = copy_string("unknown C++ exception");
  }
  return false;
}

}  // namespace

extern "C" {

typedef torch::inductor::AOTIModelPackageLoader lt_aoti;

// The model library of a package NEEDs libtorch.so, which a process linked only against
// libtorch_cpu.so and libc10.so (both handlers) has not loaded, and which the dynamic linker
// would look for on LD_LIBRARY_PATH only. Loaded here from the directory the running
// libtorch_cpu.so came from (so the one libtorch found at start), with RTLD_GLOBAL, the model
// library's NEEDED entry is then satisfied by the library already loaded. Returns the path
// loaded, or nullptr with `*err` set.
char* lt_aoti_load_libtorch(char** err) {
  Dl_info info;
  // Any function of libtorch_cpu.so: its address names the file it was loaded from.
  void* anchor = reinterpret_cast<void*>(&at::get_num_threads);
  if (dladdr(anchor, &info) == 0 || info.dli_fname == nullptr) {
    *err = copy_string("cannot tell where libtorch_cpu.so was loaded from (dladdr failed)");
    return nullptr;
  }
  std::string cpu(info.dli_fname);
  std::string dir = cpu.substr(0, cpu.find_last_of('/') + 1);
  std::string path = dir + "libtorch.so";
  if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    const char* why = dlerror();
    *err = copy_string("cannot load " + path + " (AOTInductor model libraries need it): " +
                       (why != nullptr ? why : "unknown dlopen error"));
    return nullptr;
  }
  return copy_string(path);
}

// Loads a package (a .pt2 file, or the directory it unpacks to, loaded in place) or returns
// nullptr with `*err` set.
lt_aoti* lt_aoti_load(const char* path, const char* model_name, size_t num_runners, char** err) {
  lt_aoti* loader = nullptr;
  guarded(err, [&] {
    loader = new torch::inductor::AOTIModelPackageLoader(
        path, model_name, /*run_single_threaded=*/false, num_runners, /*device_index=*/-1);
  });
  return loader;
}

// Runs the model on `n_inputs` tensors (borrowed). On success returns 0 and sets `*outputs` to
// a malloc'd array of `*n_outputs` new tensors the caller owns (the array is freed with
// lt_aoti_free_outputs); on failure returns -1 with `*err` set.
int lt_aoti_run(lt_aoti* loader, at::Tensor* const* inputs, size_t n_inputs, at::Tensor*** outputs,
                size_t* n_outputs, char** err) {
  *outputs = nullptr;
  *n_outputs = 0;
  bool ok = guarded(err, [&] {
    c10::NoGradGuard no_grad;
    // The generated kernels open OpenMP regions with the calling thread's thread count, which
    // libtorch sets for a thread only when its own parallel code first runs there: a request
    // served on a fresh thread would otherwise run with OpenMP's default.
    at::internal::lazy_init_num_threads();
    std::vector<at::Tensor> args;
    args.reserve(n_inputs);
    for (size_t i = 0; i < n_inputs; ++i) {
      args.push_back(*inputs[i]);
    }
    std::vector<at::Tensor> results = loader->run(args);
    auto** array = static_cast<at::Tensor**>(std::malloc(sizeof(at::Tensor*) * (results.size() + 1)));
    if (array == nullptr) {
      throw std::bad_alloc();
    }
    for (size_t i = 0; i < results.size(); ++i) {
      array[i] = new at::Tensor(std::move(results[i]));
    }
    *outputs = array;
    *n_outputs = results.size();
  });
  return ok ? 0 : -1;
}

void lt_aoti_free_outputs(at::Tensor** outputs) { std::free(outputs); }

void lt_aoti_free(lt_aoti* loader) {
  char* err = nullptr;
  if (!guarded(&err, [&] { delete loader; })) {
    std::free(err);
  }
}

void lt_aoti_free_string(char* text) { std::free(text); }

}  // extern "C"
