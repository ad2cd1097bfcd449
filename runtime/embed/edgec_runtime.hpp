// edgec_runtime.hpp: run an edgec TVM bundle (model.so, a Relax VM executable) from C++.
//
// Header-only; needs the tvm-ffi headers and, at link time, libtvm_runtime and libtvm_ffi
// (`edgec package BUNDLE --embed DIR` copies all of them for the bundle's architecture):
//
//   edgec::Model model("model.so");
//   edgec::Tensor x = edgec::Tensor::Empty({1, 3, 224, 224}, edgec::kFloat32);
//   std::memcpy(x.data(), pixels, x.nbytes());
//   std::vector<edgec::Tensor> y = model.Run({x});
//
// Errors raise tvm::ffi::Error (a std::exception) with TVM's message.
#pragma once

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

namespace edgec {

constexpr DLDataType kFloat32{kDLFloat, 32, 1};
constexpr DLDataType kInt64{kDLInt, 64, 1};
constexpr DLDataType kInt32{kDLInt, 32, 1};

// Host memory, 64-byte aligned (what TVM's kernels assume for vector loads).
struct HostAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = tvm::ffi::GetDataSize(*t);
    t->data = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (t->data == nullptr) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

// A dense CPU tensor: a thin view over tvm::ffi::Tensor.
class Tensor {
 public:
  explicit Tensor(tvm::ffi::Tensor t) : t_(std::move(t)) {}

  static Tensor Empty(const std::vector<int64_t>& shape, DLDataType dtype) {
    tvm::ffi::ShapeView view(shape.data(), shape.size());
    return Tensor(tvm::ffi::Tensor::FromNDAlloc(HostAlloc(), view, dtype, DLDevice{kDLCPU, 0}));
  }

  void* data() const { return t_.data_ptr(); }
  size_t nbytes() const { return tvm::ffi::GetDataSize(t_.numel(), t_.dtype()); }
  std::vector<int64_t> shape() const {
    auto s = t_.shape();
    return std::vector<int64_t>(s.begin(), s.end());
  }
  DLDataType dtype() const { return t_.dtype(); }
  const tvm::ffi::Tensor& ffi() const { return t_; }

 private:
  tvm::ffi::Tensor t_;
};

// A compiled model: load once, run many times (not thread-safe; one Model per thread).
class Model {
 public:
  explicit Model(const std::string& path)
      : lib_(tvm::ffi::Module::LoadFromFile(LocalPath(path))),
        vm_(Get(lib_, "vm_load_executable")().cast<tvm::ffi::Module>()),
        main_(Init(vm_)) {}

  std::vector<Tensor> Run(const std::vector<Tensor>& inputs) {
    std::vector<tvm::ffi::AnyView> args;
    args.reserve(inputs.size());
    for (const Tensor& t : inputs) args.emplace_back(t.ffi());
    tvm::ffi::Any result;
    main_.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    std::vector<Tensor> outputs;
    if (auto single = result.try_cast<tvm::ffi::Tensor>()) {
      outputs.emplace_back(*single);
      return outputs;
    }
    for (const tvm::ffi::Any& item : result.cast<tvm::ffi::Array<tvm::ffi::Any>>()) {
      outputs.emplace_back(item.cast<tvm::ffi::Tensor>());
    }
    return outputs;
  }

 private:
  // dlopen searches the library path for a bare name: "model.so" means the file here
  static std::string LocalPath(const std::string& path) {
    return path.find('/') == std::string::npos ? "./" + path : path;
  }

  // one CPU device (kDLCPU, id 0) with the pooled allocator (2), as the Python VM does
  static tvm::ffi::Function Init(const tvm::ffi::Module& vm) {
    Get(vm, "vm_initialization")(static_cast<int>(kDLCPU), 0, 2);
    return Get(vm, "main");
  }

  static tvm::ffi::Function Get(const tvm::ffi::Module& m, const char* name) {
    auto f = m->GetFunction(name);
    if (!f.has_value()) throw std::runtime_error(std::string("model.so has no function ") + name);
    return *f;
  }

  tvm::ffi::Module lib_;
  tvm::ffi::Module vm_;
  tvm::ffi::Function main_;
};

}  // namespace edgec
