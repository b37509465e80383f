#include "formats/onnx_build.h"

#include <stdlib.h>

static char **str_array(const char *const *v, size_t n, int *ok) {
    char **a = calloc(n + 1, sizeof *a);
    if (!a) {
        *ok = 0;
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        if (!(a[i] = msh_strdup(v[i])))
            *ok = 0;
    return a;
}

Onnx__NodeProto *msh_onnx_node_new(const char *op, const char *name, const char *const *in,
                                   size_t n_in, const char *const *out, size_t n_out) {
    Onnx__NodeProto *n = malloc(sizeof *n);
    if (!n)
        return NULL;
    onnx__node_proto__init(n);
    int ok = 1;
    n->op_type = msh_strdup(op);
    n->name = name ? msh_strdup(name) : NULL;
    n->input = str_array(in, n_in, &ok);
    n->n_input = n->input ? n_in : 0;
    n->output = str_array(out, n_out, &ok);
    n->n_output = n->output ? n_out : 0;
    if (!ok || !n->op_type || (name && !n->name)) {
        protobuf_c_message_free_unpacked(&n->base, NULL);
        return NULL;
    }
    return n;
}

static Onnx__AttributeProto *attr_new(const char *name, Onnx__AttributeProto__AttributeType t) {
    Onnx__AttributeProto *a = malloc(sizeof *a);
    if (!a)
        return NULL;
    onnx__attribute_proto__init(a);
    a->name = msh_strdup(name);
    a->has_type = 1;
    a->type = t;
    if (!a->name) {
        free(a);
        return NULL;
    }
    return a;
}

Onnx__AttributeProto *msh_onnx_attr_int(const char *name, int64_t v) {
    Onnx__AttributeProto *a = attr_new(name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    if (a) {
        a->has_i = 1;
        a->i = v;
    }
    return a;
}

Onnx__AttributeProto *msh_onnx_attr_string(const char *name, const char *v) {
    Onnx__AttributeProto *a = attr_new(name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING);
    char *d = msh_strdup(v);
    if (!a || !d) {
        free(d);
        if (a)
            protobuf_c_message_free_unpacked(&a->base, NULL);
        return NULL;
    }
    a->has_s = 1;
    a->s.data = (uint8_t *)d;
    a->s.len = strlen(d);
    return a;
}

Onnx__AttributeProto *msh_onnx_attr_tensor(const char *name, Onnx__TensorProto *t) {
    Onnx__AttributeProto *a = attr_new(name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR);
    if (!a) {
        protobuf_c_message_free_unpacked(&t->base, NULL);
        return NULL;
    }
    a->t = t;
    return a;
}

int msh_onnx_node_add_attr(Onnx__NodeProto *n, Onnx__AttributeProto *a) {
    Onnx__AttributeProto **arr =
        a ? realloc(n->attribute, (n->n_attribute + 1) * sizeof *arr) : NULL;
    if (!arr) {
        if (a)
            protobuf_c_message_free_unpacked(&a->base, NULL);
        return 0;
    }
    arr[n->n_attribute++] = a;
    n->attribute = arr;
    return 1;
}
