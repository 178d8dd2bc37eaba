/* addon.h: the N-API bindings of the volume write path (addon.c), registered by island_native.c. */
#ifndef ISLV_ADDON_H
#define ISLV_ADDON_H

#include <node_api.h>

/* Add the volume* functions to `exports`; false (with a pending exception) on failure. */
int islv_addon_init(napi_env env, napi_value exports);

#endif
