#include "common/msh_dtype.h"

#include <string.h>

#include "common/msh_common.h"

typedef struct dtype_row {
    const char *name;    /* ONNX */
    int size;            /* bytes per element (4-bit types: 1, packed two per byte) */
    const char *st;      /* safetensors */
    const char *storage; /* torch storage class */
} dtype_row;

static const dtype_row rows[MSH_DT_COUNT] = {
    [MSH_DT_UNDEFINED] = {"UNDEFINED", 0, NULL, NULL},
    [MSH_DT_FLOAT] = {"FLOAT", 4, "F32", "FloatStorage"},
    [MSH_DT_UINT8] = {"UINT8", 1, "U8", "ByteStorage"},
    [MSH_DT_INT8] = {"INT8", 1, "I8", "CharStorage"},
    [MSH_DT_UINT16] = {"UINT16", 2, "U16", NULL},
    [MSH_DT_INT16] = {"INT16", 2, "I16", "ShortStorage"},
    [MSH_DT_INT32] = {"INT32", 4, "I32", "IntStorage"},
    [MSH_DT_INT64] = {"INT64", 8, "I64", "LongStorage"},
    [MSH_DT_STRING] = {"STRING", -1, NULL, NULL},
    [MSH_DT_BOOL] = {"BOOL", 1, "BOOL", "BoolStorage"},
    [MSH_DT_FLOAT16] = {"FLOAT16", 2, "F16", "HalfStorage"},
    [MSH_DT_DOUBLE] = {"DOUBLE", 8, "F64", "DoubleStorage"},
    [MSH_DT_UINT32] = {"UINT32", 4, "U32", NULL},
    [MSH_DT_UINT64] = {"UINT64", 8, "U64", NULL},
    [MSH_DT_COMPLEX64] = {"COMPLEX64", 8, "C64", "ComplexFloatStorage"},
    [MSH_DT_COMPLEX128] = {"COMPLEX128", 16, NULL, "ComplexDoubleStorage"},
    [MSH_DT_BFLOAT16] = {"BFLOAT16", 2, "BF16", "BFloat16Storage"},
    [MSH_DT_FLOAT8E4M3FN] = {"FLOAT8E4M3FN", 1, "F8_E4M3", NULL},
    [MSH_DT_FLOAT8E4M3FNUZ] = {"FLOAT8E4M3FNUZ", 1, NULL, NULL},
    [MSH_DT_FLOAT8E5M2] = {"FLOAT8E5M2", 1, "F8_E5M2", NULL},
    [MSH_DT_FLOAT8E5M2FNUZ] = {"FLOAT8E5M2FNUZ", 1, NULL, NULL},
    [MSH_DT_UINT4] = {"UINT4", 1, NULL, NULL},
    [MSH_DT_INT4] = {"INT4", 1, NULL, NULL},
    [MSH_DT_FLOAT4E2M1] = {"FLOAT4E2M1", 1, NULL, NULL},
    [MSH_DT_FLOAT8E8M0] = {"FLOAT8E8M0", 1, NULL, NULL},
};

static const dtype_row *row(int32_t dt) {
    return dt >= 0 && dt < MSH_DT_COUNT ? &rows[dt] : NULL;
}

int msh_dtype_size(int32_t dt) {
    const dtype_row *r = row(dt);
    return r ? r->size : 0;
}

int msh_dtype_is_4bit(int32_t dt) {
    return dt == MSH_DT_UINT4 || dt == MSH_DT_INT4 || dt == MSH_DT_FLOAT4E2M1;
}

int64_t msh_dtype_bytes(int32_t dt, int64_t numel) {
    int es = msh_dtype_size(dt);
    if (es <= 0)
        return -1;
    if (msh_dtype_is_4bit(dt))
        return numel / 2 + (numel & 1);
    int64_t r;
    if (!msh_mul_i64(numel, es, &r))
        return -2;
    return r;
}

const char *msh_dtype_name(int32_t dt) {
    const dtype_row *r = row(dt);
    return r ? r->name : "UNKNOWN";
}

const char *msh_dtype_st_name(int32_t dt) {
    const dtype_row *r = row(dt);
    return r ? r->st : NULL;
}

int32_t msh_dtype_from_st(const char *s) {
    for (int32_t i = 1; i < MSH_DT_COUNT; i++)
        if (rows[i].st && strcmp(rows[i].st, s) == 0)
            return i;
    return 0;
}

const char *msh_dtype_torch_storage(int32_t dt) {
    const dtype_row *r = row(dt);
    return r ? r->storage : NULL;
}

int32_t msh_dtype_from_torch_storage(const char *cls) {
    if (strcmp(cls, "UntypedStorage") == 0)
        return MSH_DT_UINT8; /* bytes; the tensor's own dtype says how to read them */
    for (int32_t i = 1; i < MSH_DT_COUNT; i++)
        if (rows[i].storage && strcmp(rows[i].storage, cls) == 0)
            return i;
    return 0;
}

int32_t msh_dtype_from_torch_name(const char *name) {
    static const struct {
        const char *n;
        int32_t t;
    } map[] = {{"float32", MSH_DT_FLOAT},       {"float", MSH_DT_FLOAT},
               {"float16", MSH_DT_FLOAT16},     {"half", MSH_DT_FLOAT16},
               {"bfloat16", MSH_DT_BFLOAT16},   {"float64", MSH_DT_DOUBLE},
               {"double", MSH_DT_DOUBLE},       {"int64", MSH_DT_INT64},
               {"long", MSH_DT_INT64},          {"int32", MSH_DT_INT32},
               {"int", MSH_DT_INT32},           {"int16", MSH_DT_INT16},
               {"short", MSH_DT_INT16},         {"int8", MSH_DT_INT8},
               {"uint8", MSH_DT_UINT8},         {"bool", MSH_DT_BOOL},
               {"complex64", MSH_DT_COMPLEX64}, {"complex128", MSH_DT_COMPLEX128}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strcmp(name, map[i].n) == 0)
            return map[i].t;
    return 0;
}
