// run_ort_model: run a packaged edgec mobile model (ORT format) on raw input files with
// onnxruntime's C++ API, the way an app embeds it.
//
//   run_ort_model model.ort io.txt INPUT_DIR OUTPUT_DIR
//
// io.txt (written by `edgec package --embed`) has one line per tensor:
//   input NAME DTYPE D0 D1 ...      /  output NAME DTYPE D0 D1 ...
// INPUT_DIR/NAME.bin holds each input as raw little-endian data in that shape; the outputs are
// written as OUTPUT_DIR/NAME.bin. Exit status 0 on success, 1 with a message on error.
// Set EDGEC_SAVED_RUNTIME_OPTIMIZATIONS=1 for a model converted in the 'runtime' style.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "onnxruntime_cxx_api.h"

namespace {

struct Spec {
  std::string role, name, dtype;
  std::vector<int64_t> shape;
};

struct Dtype {
  ONNXTensorElementDataType type;
  size_t size;
};

Dtype ParseDtype(const std::string& s) {
  if (s == "float32") return {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, 4};
  if (s == "int64") return {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, 8};
  if (s == "int32") return {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, 4};
  if (s == "int8") return {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8, 1};
  if (s == "uint8") return {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, 1};
  if (s == "bool") return {ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL, 1};
  throw std::runtime_error("unsupported dtype " + s);
}

std::vector<Spec> ReadSpecs(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::vector<Spec> specs;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::istringstream fields(line);
    Spec s;
    fields >> s.role >> s.name >> s.dtype;
    for (int64_t d; fields >> d;) s.shape.push_back(d);
    specs.push_back(s);
  }
  return specs;
}

size_t Elements(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: run_ort_model model.ort io.txt INPUT_DIR OUTPUT_DIR\n";
    return 2;
  }
  try {
    Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "edgec");
    Ort::SessionOptions options;
    options.SetIntraOpNumThreads(1);
    const char* replay = std::getenv("EDGEC_SAVED_RUNTIME_OPTIMIZATIONS");
    if (replay != nullptr && std::strcmp(replay, "1") == 0) {
      options.AddConfigEntry("session.enable_saved_runtime_optimizations", "1");
    }
    // An app adds its execution provider here, e.g. NNAPI (Android) or Core ML (iOS), from
    // onnxruntime's provider headers, before the session is created.
    Ort::Session session(env, argv[1], options);
    Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);

    std::vector<Spec> specs = ReadSpecs(argv[2]);
    std::vector<std::vector<char>> buffers;
    std::vector<Ort::Value> inputs;
    std::vector<const char*> input_names, output_names;
    std::vector<Spec> outputs;
    buffers.reserve(specs.size());
    for (const Spec& s : specs) {
      if (s.role == "output") {
        outputs.push_back(s);
        continue;
      }
      Dtype dt = ParseDtype(s.dtype);
      size_t bytes = Elements(s.shape) * dt.size;
      buffers.emplace_back(bytes);
      std::string file = std::string(argv[3]) + "/" + s.name + ".bin";
      std::ifstream in(file, std::ios::binary);
      if (!in.read(buffers.back().data(), static_cast<std::streamsize>(bytes))) {
        throw std::runtime_error("cannot read " + std::to_string(bytes) + " bytes from " + file);
      }
      inputs.push_back(Ort::Value::CreateTensor(memory, buffers.back().data(), bytes,
                                                s.shape.data(), s.shape.size(), dt.type));
    }
    for (const Spec& s : specs) (s.role == "output" ? output_names : input_names).push_back(s.name.c_str());

    auto start = std::chrono::steady_clock::now();
    std::vector<Ort::Value> results =
        session.Run(Ort::RunOptions{nullptr}, input_names.data(), inputs.data(), inputs.size(),
                    output_names.data(), output_names.size());
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();

    for (size_t i = 0; i < results.size(); ++i) {
      Ort::TensorTypeAndShapeInfo info = results[i].GetTensorTypeAndShapeInfo();
      size_t bytes = info.GetElementCount() * ParseDtype(outputs[i].dtype).size;
      std::string file = std::string(argv[4]) + "/" + outputs[i].name + ".bin";
      std::ofstream out(file, std::ios::binary);
      out.write(static_cast<const char*>(results[i].GetTensorRawData()),
                static_cast<std::streamsize>(bytes));
      if (!out) throw std::runtime_error("cannot write " + file);
    }
    std::cout << "ran " << argv[1] << " in " << ms << " ms; " << results.size()
              << " output(s) written to " << argv[4] << "\n";
  } catch (const std::exception& e) {
    std::cerr << "run_ort_model: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
