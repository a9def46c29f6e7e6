/*
 * The C API under bad input, run by tests/c_api.rs (under AddressSanitizer
 * and LeakSanitizer where the compiler has them):
 *
 *   misuse DIGITS.wasm TAMPERED.wasm PUBLISHER.pub OTHER.pub ARTIFACT OTHER_ARTIFACT
 *
 * ARTIFACT is DIGITS.wasm precompiled for this host and signed by the
 * publisher; OTHER_ARTIFACT the same signed by the other key.
 *
 * Each check prints "ok NAME" or "FAIL NAME: ..."; the exit status is the
 * number of failed checks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeml.h"

static int failures = 0;

static void expect(const char *name, edgeml_status_t got, edgeml_status_t want) {
    if (got == want) {
        printf("ok %s\n", name);
    } else {
        const char *msg = edgeml_last_error_message();
        printf("FAIL %s: status %d, expected %d (%s)\n", name, (int)got, (int)want,
               msg ? msg : "no message");
        failures++;
    }
}

static void expect_true(const char *name, int cond) {
    if (cond) {
        printf("ok %s\n", name);
    } else {
        printf("FAIL %s\n", name);
        failures++;
    }
}

/* A whole file in memory (NULL on error); *len gets its size. */
static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    unsigned char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        if (size >= 0 && fseek(f, 0, SEEK_SET) == 0) {
            buf = malloc(size > 0 ? (size_t)size : 1);
            if (buf != NULL && fread(buf, 1, (size_t)size, f) != (size_t)size) {
                free(buf);
                buf = NULL;
            }
            *len = (size_t)size;
        }
    }
    fclose(f);
    return buf;
}

static int message_contains(const char *needle) {
    const char *msg = edgeml_last_error_message();
    return msg != NULL && strstr(msg, needle) != NULL;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr,
                "usage: %s DIGITS.wasm TAMPERED.wasm PUBLISHER.pub OTHER.pub ARTIFACT OTHER_ARTIFACT\n",
                argv[0]);
        return 100;
    }
    const char *bundle_path = argv[1], *tampered_path = argv[2];
    const char *publisher = argv[3], *other = argv[4];
    const char *artifact_path = argv[5], *other_artifact_path = argv[6];

    /* Version, and freeing NULL. */
    expect_true("version_is_set", strlen(edgeml_version()) > 0);
    edgeml_config_free(NULL);
    edgeml_runtime_free(NULL);
    edgeml_trust_free(NULL);
    edgeml_bundle_free(NULL);
    edgeml_model_free(NULL);
    edgeml_prediction_free(NULL);
    edgeml_string_free(NULL);
    expect_true("free_null_is_a_no_op", 1);

    /* NULL where a handle is required. */
    edgeml_runtime_t *runtime = (edgeml_runtime_t *)&failures; /* must be reset to NULL */
    expect("runtime_new_null_config", edgeml_runtime_new(NULL, &runtime), EDGEML_ERR_NULL_ARGUMENT);
    expect_true("out_pointer_reset_on_failure", runtime == NULL);
    expect_true("message_names_the_argument", message_contains("config is NULL"));

    edgeml_config_t *config = edgeml_config_new();
    expect("runtime_new_null_out", edgeml_runtime_new(config, NULL), EDGEML_ERR_NULL_ARGUMENT);
    expect("config_memory_too_small", edgeml_config_set_max_memory(config, 1024),
           EDGEML_ERR_INVALID_ARGUMENT);
    expect("config_zero_deadline", edgeml_config_set_deadline_ms(config, 0),
           EDGEML_ERR_INVALID_ARGUMENT);
    expect("config_unknown_backend", edgeml_config_set_backend(config, "gpu"),
           EDGEML_ERR_INVALID_ARGUMENT);
    expect("config_null_cache_dir", edgeml_config_set_cache_dir(config, NULL),
           EDGEML_ERR_NULL_ARGUMENT);
    expect("config_memory", edgeml_config_set_max_memory(config, 64u << 20), EDGEML_OK);
    expect("runtime_new", edgeml_runtime_new(config, &runtime), EDGEML_OK);

    /* Trust. */
    edgeml_trust_t *trust = NULL, *wrong = NULL;
    const char *one[] = {publisher};
    expect("trust_threshold_above_keys", edgeml_trust_from_key_files(one, 1, 2, &trust),
           EDGEML_ERR_INVALID_ARGUMENT);
    const char *missing[] = {"/nonexistent/edgeml.pub"};
    expect("trust_missing_key_file", edgeml_trust_from_key_files(missing, 1, 1, &trust),
           EDGEML_ERR_IO);
    const char *null_key[] = {NULL};
    expect("trust_null_key_path", edgeml_trust_from_key_files(null_key, 1, 1, &trust),
           EDGEML_ERR_NULL_ARGUMENT);
    const unsigned char not_a_root[] = "{\"signed\": 1}";
    expect("trust_from_garbage_root",
           edgeml_trust_from_root(not_a_root, sizeof not_a_root - 1, &trust),
           EDGEML_ERR_BUNDLE_REJECTED);
    expect("trust", edgeml_trust_from_key_files(one, 1, 1, &trust), EDGEML_OK);
    const char *others[] = {other};
    expect("trust_other_key", edgeml_trust_from_key_files(others, 1, 1, &wrong), EDGEML_OK);

    /* Bundles: tampered, signed by a key not trusted, missing, empty. */
    edgeml_bundle_t *bundle = NULL;
    expect("rejects_tampered_bundle",
           edgeml_bundle_verify_file(runtime, trust, tampered_path, &bundle),
           EDGEML_ERR_BUNDLE_REJECTED);
    expect_true("tampered_bundle_gives_no_handle", bundle == NULL);
    expect("rejects_untrusted_signer", edgeml_bundle_verify_file(runtime, wrong, bundle_path, &bundle),
           EDGEML_ERR_BUNDLE_REJECTED);
    expect("rejects_missing_bundle_file",
           edgeml_bundle_verify_file(runtime, trust, "/nonexistent/b.wasm", &bundle), EDGEML_ERR_IO);
    expect("rejects_empty_bundle", edgeml_bundle_verify(runtime, trust, NULL, 0, &bundle),
           EDGEML_ERR_BUNDLE_REJECTED);
    expect("rejects_null_bytes_with_length", edgeml_bundle_verify(runtime, trust, NULL, 10, &bundle),
           EDGEML_ERR_NULL_ARGUMENT);
    expect("verify", edgeml_bundle_verify_file(runtime, trust, bundle_path, &bundle), EDGEML_OK);
    char *manifest = NULL;
    expect("manifest_json", edgeml_bundle_manifest_json(bundle, &manifest), EDGEML_OK);
    expect_true("manifest_names_the_model", manifest && strstr(manifest, "\"digits\""));
    edgeml_string_free(manifest);

    edgeml_model_t *model = NULL;
    expect("load_null_bundle", edgeml_model_load(runtime, NULL, &model), EDGEML_ERR_NULL_ARGUMENT);
    expect("load", edgeml_model_load(runtime, bundle, &model), EDGEML_OK);

    /* Predictions on bad input; the model keeps serving after each. */
    edgeml_prediction_t *prediction = NULL;
    float wrong_shape[63] = {0};
    uint64_t shape63[] = {1, 63};
    edgeml_tensor_t t63 = {"X", EDGEML_DTYPE_F32, shape63, 2, wrong_shape, sizeof wrong_shape};
    expect("rejects_wrong_shape", edgeml_model_predict(model, &t63, 1, &prediction),
           EDGEML_ERR_INVALID_INPUT);
    float pixels[64];
    for (int i = 0; i < 64; i++) pixels[i] = 0.5f;
    uint64_t shape64[] = {1, 64};
    edgeml_tensor_t short_data = {"X", EDGEML_DTYPE_F32, shape64, 2, pixels, 10};
    expect("rejects_data_shorter_than_shape", edgeml_model_predict(model, &short_data, 1, &prediction),
           EDGEML_ERR_INVALID_INPUT);
    edgeml_tensor_t unknown = {"Y", EDGEML_DTYPE_F32, shape64, 2, pixels, sizeof pixels};
    expect("rejects_unknown_input", edgeml_model_predict(model, &unknown, 1, &prediction),
           EDGEML_ERR_INVALID_INPUT);
    edgeml_tensor_t bad_dtype = {"X", 77, shape64, 2, pixels, sizeof pixels};
    expect("rejects_unknown_dtype", edgeml_model_predict(model, &bad_dtype, 1, &prediction),
           EDGEML_ERR_INVALID_ARGUMENT);
    edgeml_tensor_t null_shape = {"X", EDGEML_DTYPE_F32, NULL, 2, pixels, sizeof pixels};
    expect("rejects_null_shape", edgeml_model_predict(model, &null_shape, 1, &prediction),
           EDGEML_ERR_NULL_ARGUMENT);
    expect("rejects_null_inputs", edgeml_model_predict(model, NULL, 1, &prediction),
           EDGEML_ERR_NULL_ARGUMENT);
    const unsigned char not_png[] = "\x89PNG\r\n\x1a\nthis is not a png";
    expect("rejects_corrupt_png",
           edgeml_model_predict_media(model, "image/png", not_png, sizeof not_png - 1, &prediction),
           EDGEML_ERR_DECODE);
    expect("rejects_unsupported_media",
           edgeml_model_predict_media(model, "audio/wav", not_png, sizeof not_png - 1, &prediction),
           EDGEML_ERR_UNSUPPORTED_MEDIA);
    expect_true("failed_predictions_give_no_handle", prediction == NULL);

    edgeml_tensor_t good = {"X", EDGEML_DTYPE_F32, shape64, 2, pixels, sizeof pixels};
    expect("predict_after_errors", edgeml_model_predict(model, &good, 1, &prediction), EDGEML_OK);
    expect_true("has_outputs", edgeml_prediction_output_count(prediction) >= 1);
    edgeml_tensor_t output;
    expect("output_0", edgeml_prediction_output(prediction, 0, &output), EDGEML_OK);
    expect_true("output_is_named", output.name != NULL && strlen(output.name) > 0);
    expect("output_out_of_range", edgeml_prediction_output(prediction, 99, &output),
           EDGEML_ERR_INVALID_ARGUMENT);
    expect_true("ten_labels", edgeml_prediction_label_count(prediction) >= 3);
    const char *label = NULL;
    float score = -1.0f;
    expect("label_0", edgeml_prediction_label(prediction, 0, &label, &score), EDGEML_OK);
    expect_true("label_has_a_score", label != NULL && score >= 0.0f && score <= 1.0f);
    expect("label_out_of_range", edgeml_prediction_label(prediction, 1000, &label, &score),
           EDGEML_ERR_INVALID_ARGUMENT);
    char *json = NULL;
    expect("prediction_json", edgeml_prediction_json(prediction, &json), EDGEML_OK);
    expect_true("json_has_scores", json && strstr(json, "\"scores\""));
    edgeml_string_free(json);

    char *stats = NULL;
    expect("telemetry_not_configured", edgeml_telemetry_flush(runtime, 10, &stats),
           EDGEML_ERR_TELEMETRY);

    edgeml_prediction_free(prediction);

    /* Precompiled artifacts: loaded without compiling when trusted, refused otherwise. */
    size_t artifact_len = 0, other_len = 0;
    unsigned char *artifact = read_file(artifact_path, &artifact_len);
    unsigned char *other_artifact = read_file(other_artifact_path, &other_len);
    expect_true("artifacts_read", artifact != NULL && other_artifact != NULL);
    edgeml_model_t *precompiled = NULL;
    expect("rejects_artifact_signed_by_untrusted_key",
           edgeml_model_load_precompiled(runtime, bundle, trust, other_artifact, other_len,
                                         &precompiled),
           EDGEML_ERR_ARTIFACT_REJECTED);
    expect_true("untrusted_artifact_gives_no_handle", precompiled == NULL);
    expect("rejects_artifact_trusted_for_another_key",
           edgeml_model_load_precompiled(runtime, bundle, wrong, artifact, artifact_len,
                                         &precompiled),
           EDGEML_ERR_ARTIFACT_REJECTED);
    const unsigned char garbage[] = "EDGEMLPA not really";
    expect("rejects_garbage_artifact",
           edgeml_model_load_precompiled(runtime, bundle, trust, garbage, sizeof garbage - 1,
                                         &precompiled),
           EDGEML_ERR_ARTIFACT_REJECTED);
    expect("rejects_null_artifact_with_length",
           edgeml_model_load_precompiled(runtime, bundle, trust, NULL, 10, &precompiled),
           EDGEML_ERR_NULL_ARGUMENT);
    expect("load_precompiled",
           edgeml_model_load_precompiled(runtime, bundle, trust, artifact, artifact_len,
                                         &precompiled),
           EDGEML_OK);
    expect("precompiled_predicts", edgeml_model_predict(precompiled, &good, 1, &prediction),
           EDGEML_OK);
    edgeml_prediction_free(prediction);
    edgeml_model_free(precompiled);
    free(artifact);
    free(other_artifact);

    edgeml_model_free(model);
    edgeml_bundle_free(bundle);
    edgeml_trust_free(wrong);
    edgeml_trust_free(trust);
    edgeml_runtime_free(runtime);
    edgeml_config_free(config);
    printf("%d failed\n", failures);
    return failures;
}
