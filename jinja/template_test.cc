#include "jinja/template.h"
#include "gtest/gtest.h"
TEST(Smoke, X) {}
