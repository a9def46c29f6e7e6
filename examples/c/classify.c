/*
 * A gateway program in C: verify a signed model bundle, load it, classify
 * a PNG and print the best label.
 *
 *   cc -std=c11 -I host/capi/include examples/c/classify.c \
 *      -L "$TARGET/release" -ledgeml_c -Wl,-rpath,"$TARGET/release" -o classify
 *   ./classify digits.wasm keys/publisher.pub models/digits/holdout/000.png
 *
 * Exit status: 0 on success, 1 on usage errors, 2 when edgeml refuses
 * (the message says why).
 */
#include <stdio.h>
#include <stdlib.h>

#include "edgeml.h"

static int fail(const char *what, edgeml_status_t status) {
    fprintf(stderr, "%s failed (%d): %s\n", what, (int)status,
            edgeml_last_error_message());
    return 2;
}

/* Read a whole file; NULL on failure. */
static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    unsigned char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        if (size >= 0 && fseek(f, 0, SEEK_SET) == 0) {
            buf = malloc(size > 0 ? (size_t)size : 1);
            if (buf && fread(buf, 1, (size_t)size, f) != (size_t)size) {
                free(buf);
                buf = NULL;
            }
            *len = (size_t)size;
        }
    }
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s BUNDLE.wasm PUBLISHER.pub IMAGE.png\n", argv[0]);
        return 1;
    }
    size_t png_len = 0;
    unsigned char *png = read_file(argv[3], &png_len);
    if (!png) {
        perror(argv[3]);
        return 1;
    }

    int rc = 0;
    edgeml_config_t *config = edgeml_config_new();
    edgeml_runtime_t *runtime = NULL;
    edgeml_trust_t *trust = NULL;
    edgeml_bundle_t *bundle = NULL;
    edgeml_model_t *model = NULL;
    edgeml_prediction_t *prediction = NULL;
    edgeml_status_t s;

    if ((s = edgeml_config_set_max_memory(config, 64u << 20)) != EDGEML_OK) {
        rc = fail("edgeml_config_set_max_memory", s);
        goto done;
    }
    if ((s = edgeml_config_set_deadline_ms(config, 2000)) != EDGEML_OK) {
        rc = fail("edgeml_config_set_deadline_ms", s);
        goto done;
    }
    if ((s = edgeml_runtime_new(config, &runtime)) != EDGEML_OK) {
        rc = fail("edgeml_runtime_new", s);
        goto done;
    }
    const char *keys[] = {argv[2]};
    if ((s = edgeml_trust_from_key_files(keys, 1, 1, &trust)) != EDGEML_OK) {
        rc = fail("edgeml_trust_from_key_files", s);
        goto done;
    }
    /* Signatures, digests and structure are checked here; nothing compiles
     * before this succeeds. */
    if ((s = edgeml_bundle_verify_file(runtime, trust, argv[1], &bundle)) != EDGEML_OK) {
        rc = fail("edgeml_bundle_verify_file", s);
        goto done;
    }
    if ((s = edgeml_model_load(runtime, bundle, &model)) != EDGEML_OK) {
        rc = fail("edgeml_model_load", s);
        goto done;
    }
    if ((s = edgeml_model_predict_media(model, "image/png", png, png_len, &prediction)) !=
        EDGEML_OK) {
        rc = fail("edgeml_model_predict_media", s);
        goto done;
    }
    const char *label = NULL;
    float score = 0.0f;
    if ((s = edgeml_prediction_label(prediction, 0, &label, &score)) != EDGEML_OK) {
        rc = fail("edgeml_prediction_label", s);
        goto done;
    }
    printf("%s %.4f\n", label, score);

done:
    edgeml_prediction_free(prediction);
    edgeml_model_free(model);
    edgeml_bundle_free(bundle);
    edgeml_trust_free(trust);
    edgeml_runtime_free(runtime);
    edgeml_config_free(config);
    free(png);
    return rc;
}
