/* The CHECK macro of the C unit tests: counts failures, keeps going, prints where. */
#ifndef MSH_TEST_CHECK_H
#define MSH_TEST_CHECK_H

#include <stdio.h>

static int fails;
#define CHECK(c, ...)                                                                              \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                            \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
            fails++;                                                                               \
        }                                                                                          \
    } while (0)

#endif
