/*
 * internal.h - helpers shared by the files of parallel/ and no one else.
 * Pure; any thread.
 */
#ifndef MP_PARALLEL_INTERNAL_H
#define MP_PARALLEL_INTERNAL_H

#include <stdint.h>

#include "common/status.h"
#include "model/spec.h"

/*
 * The full widths entering and leaving every layer of spec, walked from
 * model.input (so a spec filled by hand, without mp_spec_parse's derived
 * in_dim/out_dim, works too).  in_p and out_p hold spec->model.nlayers
 * entries.  Refuses a layer whose width cannot hold, naming its JSON path.
 */
mp_status_t mp_par_layer_dims(const mp_spec_t *spec, int64_t *in_p, int64_t *out_p,
                              mp_errbuf_t *err);

#endif
