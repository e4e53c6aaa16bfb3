{
  "targets": [
    {
      "target_name": "pgsplice",
      "sources": ["src/pgsplice.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-Wall"],
      "libraries": ["-lbpf", "-lelf", "-lz"]
    }
  ]
}
