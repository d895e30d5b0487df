/*
 * json.h - renders any protobuf-c message of mpar.proto as a jansson JSON
 * object, generically from its descriptor: field names as in the .proto,
 * enums as their short names ("ALIVE", "PENDING", "CPU"), uint64 as
 * integers, bytes as lowercase hex, and a field X that has a companion
 * `has_X` bool rendered as null when has_X is false (has_X itself is not
 * shown).  Used by the status socket and by mpar-client's `-o json`.  Pure;
 * any thread.
 *
 * Numbers that are not finite: JSON has no NaN or Infinity, and jansson's
 * json_real() returns NULL for them, which would drop the whole record.
 * mpar writes them as the strings "NaN", "Infinity" and "-Infinity", as
 * the protobuf JSON mapping does, everywhere (status socket, -o json, the
 * coordinator's state file), and reads them back as such.
 */
#ifndef MP_PROTO_JSON_H
#define MP_PROTO_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <protobuf-c/protobuf-c.h>

/* A new reference, or NULL when out of memory. */
json_t *mp_proto_to_json(const ProtobufCMessage *msg);
/* A JSON number, or "NaN" / "Infinity" / "-Infinity" when v is not finite;
 * NULL only when out of memory. */
json_t *mp_json_real(double v);
/* The double that v holds: a number, one of those three strings, or null
 * (NaN).  false, and *v_p untouched, for anything else. */
bool mp_json_real_value(const json_t *v, double *v_p);

/* The short name of an enum value: "NODE_STATE_ALIVE" -> "ALIVE". */
const char *mp_proto_enum_short(const ProtobufCEnumDescriptor *desc, int value);

#endif
