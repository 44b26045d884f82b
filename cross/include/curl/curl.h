/* Empty on purpose. librdkafka 2.12.1 includes <curl/curl.h> from a source
 * file even when built WITH_CURL=0 (an #ifdef slip); nothing from curl is
 * used then. The host build gets the header from libcurl4-openssl-dev; a
 * cross build has no target curl headers, so cross/build puts this directory
 * on the target's include path instead. */
