// run_bundle: run a packaged edgec model on raw input files, without Python.
//
//   run_bundle model.so io.txt INPUT_DIR OUTPUT_DIR
//
// io.txt (written by `edgec package --embed`) has one line per tensor:
//   input NAME DTYPE D0 D1 ...      /  output NAME DTYPE D0 D1 ...
// INPUT_DIR/NAME.bin holds each input as raw little-endian data in that shape; the outputs are
// written as OUTPUT_DIR/NAME.bin. Exit status 0 on success, 1 with a message on error.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "edgec_runtime.hpp"

namespace {

struct Spec {
  std::string role, name, dtype;
  std::vector<int64_t> shape;
};

DLDataType ParseDtype(const std::string& s) {
  if (s == "float32") return edgec::kFloat32;
  if (s == "int64") return edgec::kInt64;
  if (s == "int32") return edgec::kInt32;
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

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: run_bundle model.so io.txt INPUT_DIR OUTPUT_DIR\n";
    return 2;
  }
  try {
    edgec::Model model(argv[1]);
    std::vector<Spec> specs = ReadSpecs(argv[2]);
    std::vector<edgec::Tensor> inputs;
    std::vector<Spec> outputs;
    for (const Spec& s : specs) {
      if (s.role == "output") {
        outputs.push_back(s);
        continue;
      }
      edgec::Tensor t = edgec::Tensor::Empty(s.shape, ParseDtype(s.dtype));
      std::string file = std::string(argv[3]) + "/" + s.name + ".bin";
      std::ifstream in(file, std::ios::binary);
      if (!in.read(static_cast<char*>(t.data()), static_cast<std::streamsize>(t.nbytes()))) {
        throw std::runtime_error("cannot read " + std::to_string(t.nbytes()) + " bytes from " + file);
      }
      inputs.push_back(t);
    }
    auto start = std::chrono::steady_clock::now();
    std::vector<edgec::Tensor> results = model.Run(inputs);
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (results.size() != outputs.size()) {
      throw std::runtime_error("the model returned " + std::to_string(results.size()) +
                               " outputs; io.txt lists " + std::to_string(outputs.size()));
    }
    for (size_t i = 0; i < results.size(); ++i) {
      std::string file = std::string(argv[4]) + "/" + outputs[i].name + ".bin";
      std::ofstream out(file, std::ios::binary);
      out.write(static_cast<const char*>(results[i].data()),
                static_cast<std::streamsize>(results[i].nbytes()));
      if (!out) throw std::runtime_error("cannot write " + file);
    }
    std::cout << "ran " << argv[1] << " in " << ms << " ms; " << results.size()
              << " output(s) written to " << argv[4] << "\n";
  } catch (const std::exception& e) {
    std::cerr << "run_bundle: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
