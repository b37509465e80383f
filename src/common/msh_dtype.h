/*
 * Element types: one table for every format.
 *
 * Element types are identified by their ONNX TensorProto.DataType code (FLOAT 1 ... FLOAT8E8M0
 * 24), the richest numbering of the formats we read. The table gives each its ONNX name, its
 * size, the safetensors dtype string, the torch dtype name(s) and the torch storage class, so a
 * reader or writer of any format translates through it and no format includes another's header.
 */
#ifndef MSH_DTYPE_H
#define MSH_DTYPE_H

#include <stdint.h>

enum {
    MSH_DT_UNDEFINED = 0,
    MSH_DT_FLOAT = 1,
    MSH_DT_UINT8 = 2,
    MSH_DT_INT8 = 3,
    MSH_DT_UINT16 = 4,
    MSH_DT_INT16 = 5,
    MSH_DT_INT32 = 6,
    MSH_DT_INT64 = 7,
    MSH_DT_STRING = 8,
    MSH_DT_BOOL = 9,
    MSH_DT_FLOAT16 = 10,
    MSH_DT_DOUBLE = 11,
    MSH_DT_UINT32 = 12,
    MSH_DT_UINT64 = 13,
    MSH_DT_COMPLEX64 = 14,
    MSH_DT_COMPLEX128 = 15,
    MSH_DT_BFLOAT16 = 16,
    MSH_DT_FLOAT8E4M3FN = 17,
    MSH_DT_FLOAT8E4M3FNUZ = 18,
    MSH_DT_FLOAT8E5M2 = 19,
    MSH_DT_FLOAT8E5M2FNUZ = 20,
    MSH_DT_UINT4 = 21,
    MSH_DT_INT4 = 22,
    MSH_DT_FLOAT4E2M1 = 23,
    MSH_DT_FLOAT8E8M0 = 24,
    MSH_DT_COUNT = 25
};

/* Bytes of one element: 1 for the 4-bit types (two share a byte, see msh_dtype_bytes), -1 for
 * STRING, 0 for codes this table does not know. */
int msh_dtype_size(int32_t dt);

/* 1 for the types that pack two elements per byte (UINT4, INT4, FLOAT4E2M1). */
int msh_dtype_is_4bit(int32_t dt);

/* Data bytes of `numel` elements: -1 when the type has no fixed size (STRING, unknown codes),
 * -2 when the count overflows. */
int64_t msh_dtype_bytes(int32_t dt, int64_t numel);

/* The ONNX name ("FLOAT", "BFLOAT16"); "UNKNOWN" for codes outside the table. */
const char *msh_dtype_name(int32_t dt);

/* safetensors dtype string ("F32"), or NULL when safetensors has none. */
const char *msh_dtype_st_name(int32_t dt);
/* The type of a safetensors dtype string, or 0. */
int32_t msh_dtype_from_st(const char *s);

/* torch storage class name without the module ("FloatStorage"), or NULL. */
const char *msh_dtype_torch_storage(int32_t dt);
/* The type of a torch storage class name ("HalfStorage", "UntypedStorage" = bytes), or 0. */
int32_t msh_dtype_from_torch_storage(const char *cls);
/* The type of a torch dtype attribute name ("float32", "half", "long"), or 0. */
int32_t msh_dtype_from_torch_name(const char *name);

#endif
