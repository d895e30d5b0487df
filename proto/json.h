/*
 * json.h - renders any protobuf-c message of mpar.proto as a jansson JSON
 * object, generically from its descriptor: field names as in the .proto,
 * enums as their short names ("ALIVE", "PENDING", "CPU"), uint64 as
 * integers, bytes as lowercase hex, and a field X that has a companion
 * `has_X` bool rendered as null when has_X is false (has_X itself is not
 * shown).  Used by the status socket and by mpar-client's `-o json`.  Pure;
 * any thread.
 */
#ifndef MP_PROTO_JSON_H
#define MP_PROTO_JSON_H

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

/* A new reference, or NULL when out of memory. */
json_t *mp_proto_to_json(const ProtobufCMessage *msg);
/* The short name of an enum value: "NODE_STATE_ALIVE" -> "ALIVE". */
const char *mp_proto_enum_short(const ProtobufCEnumDescriptor *desc, int value);

#endif
