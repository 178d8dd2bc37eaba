# island's N-API addon: sparse-file primitives for the volume engine (see island_native.c).
# Built by scripts/build-native.sh into build/Release/island_native.node.
{
  "targets": [
    {
      "target_name": "island_native",
      "sources": ["island_native.c", "fuse/addon.c", "fuse/files.c", "fuse/handles.c", "fuse/jsfile.c", "fuse/ops.c", "fuse/server.c"],
      "libraries": ["-lpthread"],
      "defines": ["NAPI_VERSION=8", "_FILE_OFFSET_BITS=64"],
      "cflags": ["-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags_c": ["-std=gnu11"]
    }
  ]
}
