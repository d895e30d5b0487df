/*
 * json.c - protobuf-c message -> JSON, driven by the message descriptors, so
 * that a field added to mpar.proto shows up in every JSON document without
 * code here.  Pure; any thread.
 */
#include "proto/json.h"

#include <ctype.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

/* The UPPER_SNAKE prefix of an enum type: "NodeState" -> "NODE_STATE_". */
static size_t enum_prefix(const ProtobufCEnumDescriptor *desc, char *buf, size_t cap)
{
    size_t n = 0;
    for (const char *p = desc->short_name; *p && n + 3 < cap; p++) {
        if (isupper((unsigned char)*p) && p != desc->short_name) {
            buf[n++] = '_';
        }
        buf[n++] = (char)toupper((unsigned char)*p);
    }
    buf[n++] = '_';
    buf[n] = '\0';
    return n;
}

const char *mp_proto_enum_short(const ProtobufCEnumDescriptor *desc, int value)
{
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(desc, value);
    if (v == NULL) {
        return "UNKNOWN";
    }
    char prefix[96];
    size_t n = enum_prefix(desc, prefix, sizeof(prefix));
    if (strncmp(v->name, prefix, n) == 0 && v->name[n] != '\0') {
        return v->name + n;
    }
    return v->name;
}

json_t *mp_json_real(double v)
{
    if (isfinite(v)) {
        return json_real(v);
    }
    return json_string(isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity");
}

bool mp_json_real_value(const json_t *v, double *v_p)
{
    if (json_is_number(v)) {
        *v_p = json_number_value(v);
        return true;
    }
    if (json_is_null(v)) {
        *v_p = NAN;
        return true;
    }
    const char *s = json_string_value(v);
    if (s == NULL) {
        return false;
    }
    if (strcmp(s, "NaN") == 0) {
        *v_p = NAN;
    } else if (strcmp(s, "Infinity") == 0) {
        *v_p = INFINITY;
    } else if (strcmp(s, "-Infinity") == 0) {
        *v_p = -INFINITY;
    } else {
        return false;
    }
    return true;
}

static json_t *scalar_json(const ProtobufCFieldDescriptor *f, const void *at)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_BOOL: {
        protobuf_c_boolean b;
        memcpy(&b, at, sizeof(b));
        return json_boolean(b);
    }
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32: {
        int32_t v;
        memcpy(&v, at, sizeof(v));
        return json_integer(v);
    }
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: {
        uint32_t v;
        memcpy(&v, at, sizeof(v));
        return json_integer((json_int_t)v);
    }
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64: {
        int64_t v;
        memcpy(&v, at, sizeof(v));
        return json_integer((json_int_t)v);
    }
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: {
        uint64_t v;
        memcpy(&v, at, sizeof(v));
        return json_integer((json_int_t)v);
    }
    case PROTOBUF_C_TYPE_FLOAT: {
        float v;
        memcpy(&v, at, sizeof(v));
        return mp_json_real(v);
    }
    case PROTOBUF_C_TYPE_DOUBLE: {
        double v;
        memcpy(&v, at, sizeof(v));
        return mp_json_real(v);
    }
    case PROTOBUF_C_TYPE_ENUM: {
        int v;
        memcpy(&v, at, sizeof(v));
        return json_string(mp_proto_enum_short(f->descriptor, v));
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s;
        memcpy(&s, at, sizeof(s));
        return json_string(s ? s : "");
    }
    case PROTOBUF_C_TYPE_BYTES: {
        ProtobufCBinaryData b;
        memcpy(&b, at, sizeof(b));
        char *hex = malloc(b.len * 2 + 1);
        if (hex == NULL) {
            return NULL;
        }
        for (size_t i = 0; i < b.len; i++) {
            snprintf(hex + 2 * i, 3, "%02x", b.data[i]);
        }
        hex[b.len * 2] = '\0';
        json_t *j = json_string(hex);
        free(hex);
        return j;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *m;
        memcpy(&m, at, sizeof(m));
        return m ? mp_proto_to_json(m) : json_null();
    }
    }
    return json_null();
}

static size_t elem_size(const ProtobufCFieldDescriptor *f)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    default:
        return 4;
    }
}

/* The has_X companion of field `f`, if the message declares one. */
static const ProtobufCFieldDescriptor *companion(const ProtobufCMessageDescriptor *d,
                                                 const char *name)
{
    char want[128];
    snprintf(want, sizeof(want), "has_%s", name);
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(d, want);
    return f != NULL && f->type == PROTOBUF_C_TYPE_BOOL ? f : NULL;
}

json_t *mp_proto_to_json(const ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *d = msg->descriptor;
    const char *base = (const char *)msg;
    json_t *obj = json_object();
    if (obj == NULL) {
        return NULL;
    }
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        json_t *v = NULL;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            uint32_t which;
            memcpy(&which, base + f->quantifier_offset, sizeof(which));
            if (which != f->id) {
                continue;
            }
        }
        if (strncmp(f->name, "has_", 4) == 0 && f->type == PROTOBUF_C_TYPE_BOOL &&
            protobuf_c_message_descriptor_get_field_by_name(d, f->name + 4) != NULL) {
            continue;
        }
        const ProtobufCFieldDescriptor *has = companion(d, f->name);
        if (has != NULL) {
            protobuf_c_boolean b;
            memcpy(&b, base + has->offset, sizeof(b));
            if (!b) {
                json_object_set_new(obj, f->name, json_null());
                continue;
            }
        }
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t count;
            const char *elems;
            memcpy(&count, base + f->quantifier_offset, sizeof(count));
            memcpy(&elems, base + f->offset, sizeof(elems));
            v = json_array();
            for (size_t k = 0; v != NULL && k < count; k++) {
                json_array_append_new(v, scalar_json(f, elems + k * elem_size(f)));
            }
        } else {
            v = scalar_json(f, base + f->offset);
        }
        if (v == NULL) {
            json_decref(obj);
            return NULL;
        }
        json_object_set_new(obj, f->name, v);
    }
    return obj;
}
