/*
 * test_spec.c - the job spec parser: a table of invalid specs, each with the
 * exact one-line error it must produce, and valid specs whose parsed values
 * and defaults are checked field by field (DESIGN.md's example verbatim).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/alloc.h"
#include "model/data.h"
#include "model/spec.h"

/* Specs in the table are written with ' for " to stay readable. */
static char *dequote(const char *s)
{
    char *d = strdup(s);
    for (char *p = d; *p != '\0'; p++) {
        if (*p == '\'') {
            *p = '"';
        }
    }
    return d;
}

static mp_status_t parse(const char *spec_q, mp_spec_t **spec_p, mp_errbuf_t *err)
{
    char *json = dequote(spec_q);
    mp_status_t st = mp_spec_parse(json, strlen(json), spec_p, err);
    free(json);
    return st;
}

/* Building blocks of a valid spec: 784 -> 512 -> gelu -> mlp(512, 2048) -> 10. */
#define LAYERS                                                                             \
    "[{'type':'linear','out':512},{'type':'gelu'},{'type':'mlp_block','hidden':512,"       \
    "'ffn':2048},{'type':'linear','out':10}]"
#define MODEL "'model':{'input':784,'layers':" LAYERS "}"
#define DATA "'data':{'dataset':'fashion-mnist'}"
#define SYN(classes) "'data':{'dataset':'synthetic','samples':4096,'classes':" classes "}"
#define TRAIN "'train':{'batch_size':256,'optimizer':'adamw','lr':0.001}"
#define TRAIN_SGD(extra) "'train':{'batch_size':256,'optimizer':'sgd','lr':0.1" extra "}"
#define TRAIN_ADAMW(extra) "'train':{'batch_size':256,'optimizer':'adamw','lr':0.001" extra "}"
#define PAR(p) "'parallel':{" p "}"
#define SPEC(...) "{" __VA_ARGS__ "}"
#define MODEL_L(layers) "'model':{'input':784,'layers':" layers "}"
/* A model of byte tokens: an embedding, then 256 logits per position. */
#define TEXT_MODEL_OUT(out)                                                                        \
    "'model':{'layers':[{'type':'embedding','vocab':256,'dim':16,'max_seq':64},"                   \
    "{'type':'linear','out':" out "}]}"
#define TEXT_MODEL TEXT_MODEL_OUT("256")
/* A GPT on the kjv corpus, with its embedding and block fields given. */
#define GPT_LAYERS(emb, block)                                                                     \
    "'model':{'layers':[{'type':'embedding'," emb "},{'type':'transformer_block'," block "},"      \
    "{'type':'layernorm'},{'type':'linear','out':256}]}"
#define KJV(bs) "'data':{'dataset':'kjv','block_size':" bs "}"
#define EMB "'vocab':256,'dim':12,'max_seq':16"

typedef struct {
    const char *spec;
    const char *error;
} bad_spec_t;

static const bad_spec_t bad_specs[] = {
    /* JSON and the top level. */
    {"{'name':'x',",
     "job spec: invalid JSON at line 1, column 12: string or '}' expected near end of file"},
    {"{'name':'x','name':'y'}",
     "job spec: invalid JSON at line 1, column 18: duplicate object key near '\"name\"'"},
    {"{'name':'x',\n  'model':}",
     "job spec: invalid JSON at line 2, column 11: unexpected token near '}'"},
    {"[1,2]", "job spec: expected a JSON object, got [1,2]"},
    {SPEC(MODEL "," DATA "," TRAIN ",'trian':{}"),
     "trian: unknown field (expected one of: name, model, data, parallel, train, checkpoint)"},
    {SPEC("'name':5," MODEL "," DATA "," TRAIN), "name: expected a string, got 5"},
    {SPEC("'name':'my job'," MODEL "," DATA "," TRAIN),
     "name: expected 1 to 127 characters of A-Z a-z 0-9 . _ - not starting with . or -, got "
     "\"my job\""},
    {SPEC(DATA "," TRAIN), "model: required field is missing (an object)"},
    {SPEC(MODEL "," TRAIN), "data: required field is missing (an object)"},
    {SPEC(MODEL "," DATA), "train: required field is missing (an object)"},
    {SPEC("'model':3," DATA "," TRAIN), "model: expected an object, got 3"},
    /* model */
    {SPEC("'model':{'input':784,'layers':" LAYERS ",'dropout':0.1}," DATA "," TRAIN),
     "model.dropout: unknown field (expected one of: input, layers, loss)"},
    {SPEC("'model':{'input':0,'layers':" LAYERS "}," DATA "," TRAIN),
     "model.input: expected a positive integer, got 0"},
    {SPEC("'model':{'layers':" LAYERS "}," DATA "," TRAIN),
     "model.input: required field is missing (a positive integer)"},
    {SPEC("'model':{'input':784}," DATA "," TRAIN),
     "model.layers: required field is missing (a non-empty array of layer objects)"},
    {SPEC(MODEL_L("[]") "," DATA "," TRAIN),
     "model.layers: expected a non-empty array of layer objects, got []"},
    {SPEC(MODEL_L("[{'type':'linear','out':10},'gelu']") "," DATA "," TRAIN),
     "model.layers[1]: expected an object, got \"gelu\""},
    {SPEC(MODEL_L("[{'type':'conv'},{'type':'linear','out':10}]") "," DATA "," TRAIN),
     "model.layers[0].type: expected \"linear\", \"gelu\", \"relu\", \"mlp_block\", "
     "\"embedding\", \"layernorm\" or \"transformer_block\", got \"conv\""},
    {SPEC(MODEL_L("[{'out':10}]") "," DATA "," TRAIN),
     "model.layers[0].type: required field is missing (\"linear\", \"gelu\", \"relu\", "
     "\"mlp_block\", \"embedding\", \"layernorm\" or \"transformer_block\")"},
    {SPEC(MODEL_L("[{'type':'linear'}]") "," DATA "," TRAIN),
     "model.layers[0].out: required field is missing (a positive integer)"},
    {SPEC(MODEL_L("[{'type':'linear','out':-5}]") "," DATA "," TRAIN),
     "model.layers[0].out: expected a positive integer, got -5"},
    {SPEC(MODEL_L("[{'type':'linear','out':10000000000}]") "," DATA "," TRAIN),
     "model.layers[0].out: 10000000000 is too large (at most 16777216)"},
    {SPEC(MODEL_L("[{'type':'linear','out':10,'tp':'diagonal'}]") "," DATA "," TRAIN),
     "model.layers[0].tp: expected \"column\", \"row\" or \"replicate\", got \"diagonal\""},
    {SPEC(MODEL_L("[{'type':'linear','out':10,'bias':false}]") "," DATA "," TRAIN),
     "model.layers[0].bias: unknown field for a linear layer (expected one of: type, out, tp)"},
    {SPEC(MODEL_L("[{'type':'linear','out':64},{'type':'gelu','out':64},{'type':'linear','out':"
                  "10}]") "," DATA "," TRAIN),
     "model.layers[1].out: unknown field for a gelu layer (expected one of: type)"},
    {SPEC(MODEL_L("[{'type':'linear','out':512},{'type':'relu'},{'type':'mlp_block','hidden':256,"
                  "'ffn':1024},{'type':'linear','out':10}]") "," DATA "," TRAIN),
     "model.layers[2].hidden: 256 does not match the input width 512 from model.layers[1]"},
    {SPEC(MODEL_L("[{'type':'mlp_block','hidden':512,'ffn':1024},{'type':'linear','out':10}]") ","
          DATA "," TRAIN),
     "model.layers[0].hidden: 512 does not match the input width 784 from model.input"},
    {SPEC(MODEL_L("[{'type':'mlp_block','hidden':784},{'type':'linear','out':10}]") "," DATA
          "," TRAIN),
     "model.layers[0].ffn: required field is missing (a positive integer)"},
    {SPEC(MODEL_L("[{'type':'mlp_block','hidden':784,'ffn':64,'out':3},{'type':'linear','out':"
                  "10}]") "," DATA "," TRAIN),
     "model.layers[0].out: unknown field for a mlp_block layer (expected one of: type, hidden, "
     "ffn)"},
    {SPEC("'model':{'input':784,'layers':" LAYERS ",'loss':'mse'}," DATA "," TRAIN),
     "model.loss: expected \"softmax_xent\", got \"mse\""},
    {SPEC(MODEL_L("[{'type':'linear','out':10},{'type':'gelu'}]") "," DATA "," TRAIN),
     "model.layers[1].type: the last layer must be a \"linear\" producing the logits of the "
     "softmax_xent loss, got \"gelu\""},
    {SPEC(MODEL_L("[{'type':'linear','out':12}]") "," DATA "," TRAIN),
     "model.layers[0].out: 12 does not match the 10 classes of data.dataset \"fashion-mnist\""},
    {SPEC(MODEL "," SYN("5") "," TRAIN), "model.layers[3].out: 10 does not match data.classes = 5"},
    {SPEC("'model':{'input':100,'layers':[{'type':'linear','out':10}]}," DATA "," TRAIN),
     "model.input: 100 does not match the 784 pixels of data.dataset \"fashion-mnist\""},
    /* data */
    {SPEC(MODEL ",'data':{'dataset':'mnist'}," TRAIN),
     "data.dataset: expected \"fashion-mnist\", \"synthetic\", \"text\" or \"kjv\", got "
     "\"mnist\""},
    {SPEC(MODEL ",'data':{}," TRAIN),
     "data.dataset: required field is missing (\"fashion-mnist\", \"synthetic\", \"text\" or "
     "\"kjv\")"},
    {SPEC(MODEL ",'data':{'dataset':'synthetic','samples':0,'classes':10}," TRAIN),
     "data.samples: expected a positive integer, got 0"},
    {SPEC(MODEL ",'data':{'dataset':'synthetic','classes':10}," TRAIN),
     "data.samples: required field is missing (a positive integer)"},
    {SPEC(MODEL ",'data':{'dataset':'synthetic','samples':64,'classes':1}," TRAIN),
     "data.classes: expected an integer >= 2, got 1"},
    {SPEC(MODEL ",'data':{'dataset':'synthetic','samples':64,'classes':10,'seed':-3}," TRAIN),
     "data.seed: expected a non-negative integer, got -3"},
    {SPEC(MODEL ",'data':{'dataset':'synthetic','samples':64,'classes':10,'path':'/tmp'}," TRAIN),
     "data.path: unknown field for data.dataset \"synthetic\" (expected one of: dataset, "
     "samples, classes, seed, test_samples)"},
    {SPEC(MODEL ",'data':{'dataset':'fashion-mnist','samples':100}," TRAIN),
     "data.samples: unknown field for data.dataset \"fashion-mnist\" (expected one of: dataset, "
     "path)"},
    {SPEC(MODEL ",'data':{'dataset':'fashion-mnist','path':5}," TRAIN),
     "data.path: expected a folder name (a non-empty string under 1024 bytes), got 5"},
    /* Text data sets: the data section's own fields (files are checked at start). */
    {SPEC(TEXT_MODEL ",'data':{'dataset':'text','block_size':8}," TRAIN),
     "data.path: required field is missing (the text file for data.dataset \"text\")"},
    {SPEC(TEXT_MODEL ",'data':{'dataset':'text','path':'','block_size':8}," TRAIN),
     "data.path: expected a file name (a non-empty string under 1024 bytes), got \"\""},
    {SPEC(TEXT_MODEL ",'data':{'dataset':'text','path':['a.txt'],'block_size':8}," TRAIN),
     "data.path: expected a file name (a non-empty string under 1024 bytes), got [\"a.txt\"]"},
    {SPEC(TEXT_MODEL ",'data':{'dataset':'text','path':'a.txt'}," TRAIN),
     "data.block_size: required field is missing (a positive integer)"},
    {SPEC(TEXT_MODEL ",'data':{'dataset':'text','path':'a.txt','block_size':0}," TRAIN),
     "data.block_size: expected a positive integer, got 0"},
    {SPEC(TEXT_MODEL ",'data':{'dataset':'text','path':'a.txt','block_size':2.5}," TRAIN),
     "data.block_size: expected a positive integer, got 2.5"},
    {SPEC(TEXT_MODEL ",'data':{'dataset':'text','path':'a.txt','block_size':2000000}," TRAIN),
     "data.block_size: 2000000 is too large (at most 1048576)"},
    {SPEC(TEXT_MODEL ",'data':{'dataset':'text','path':'a.txt','block_size':8,'seed':1}," TRAIN),
     "data.seed: unknown field for data.dataset \"text\" (expected one of: dataset, path, "
     "block_size)"},
    {SPEC(TEXT_MODEL ",'data':{'dataset':'kjv'}," TRAIN),
     "data.block_size: required field is missing (a positive integer)"},
    {SPEC(TEXT_MODEL ",'data':{'dataset':'kjv','block_size':-4}," TRAIN),
     "data.block_size: expected a positive integer, got -4"},
    {SPEC(TEXT_MODEL ",'data':{'dataset':'kjv','path':'a.txt','block_size':8}," TRAIN),
     "data.path: unknown field for data.dataset \"kjv\" (expected one of: dataset, "
     "block_size)"},
    {SPEC(MODEL ",'data':{'dataset':'synthetic','samples':64,'classes':10,'block_size':8}," TRAIN),
     "data.block_size: unknown field for data.dataset \"synthetic\" (expected one of: dataset, "
     "samples, classes, seed, test_samples)"},
    {SPEC(TEXT_MODEL_OUT("10") ",'data':{'dataset':'kjv','block_size':8}," TRAIN),
     "model.layers[1].out: 10 does not match the 256 byte values of data.dataset \"kjv\""},
    /* GPT layers: refused before anything starts, naming the field. */
    {SPEC(GPT_LAYERS(EMB, "'heads':5,'ffn':24") "," KJV("8") "," TRAIN),
     "model.layers[1].heads: 5 does not divide the width 12 from model.layers[0]"},
    {SPEC(GPT_LAYERS(EMB, "'heads':3,'ffn':24") "," KJV("8") "," PAR("'tp':2") "," TRAIN),
     "parallel.tp: 2 does not divide model.layers[1].heads = 3"},
    {SPEC(GPT_LAYERS(EMB, "'heads':2,'ffn':21") "," KJV("8") "," PAR("'tp':2") "," TRAIN),
     "parallel.tp: 2 does not divide model.layers[1].ffn = 21"},
    {SPEC(GPT_LAYERS("'vocab':258,'dim':12,'max_seq':16", "'heads':4,'ffn':24") "," KJV("8") ","
              PAR("'tp':4") "," TRAIN),
     "parallel.tp: 4 does not divide model.layers[0].vocab = 258"},
    {SPEC(GPT_LAYERS(EMB, "'heads':2,'ffn':24") "," KJV("17") "," TRAIN),
     "data.block_size: 17 is larger than model.layers[0].max_seq = 16"},
    {SPEC(GPT_LAYERS("'vocab':100,'dim':12,'max_seq':16", "'heads':2,'ffn':24") "," KJV("8") ","
              TRAIN),
     "model.layers[0].vocab: 100 is smaller than the 256 byte values of a text data set"},
    {SPEC(GPT_LAYERS(EMB, "'heads':2") "," KJV("8") "," TRAIN),
     "model.layers[1].ffn: required field is missing (a positive integer)"},
    {SPEC(GPT_LAYERS(EMB, "'heads':2,'ffn':24,'tp':'row'") "," KJV("8") "," TRAIN),
     "model.layers[1].tp: unknown field for a transformer_block layer (expected one of: type, "
     "heads, ffn)"},
    {SPEC("'model':{'layers':[{'type':'layernorm'},{'type':'embedding'," EMB "},"
          "{'type':'linear','out':256}]}," KJV("8") "," TRAIN),
     "model.input: required field is missing (a positive integer)"},
    {SPEC("'model':{'input':1,'layers':[{'type':'layernorm'},{'type':'embedding'," EMB "},"
          "{'type':'linear','out':256}]}," KJV("8") "," TRAIN),
     "model.layers[1].type: an \"embedding\" must be the first layer (it takes token ids)"},
    {SPEC("'model':{'input':784,'layers':[{'type':'embedding'," EMB "},"
          "{'type':'linear','out':10}]}," DATA "," TRAIN),
     "model.input: 784, but an embedding takes one token id per position (omit model.input or "
     "set it to 1)"},
    {SPEC("'model':{'layers':[{'type':'embedding'," EMB "},{'type':'linear','out':10}]}," SYN("10")
          "," TRAIN),
     "model.layers[0].type: an \"embedding\" takes token ids, which only the text data sets "
     "(\"text\", \"kjv\") give"},
    {SPEC(MODEL_L("[{'type':'linear','out':256}]") "," KJV("8") "," TRAIN),
     "model.layers[0].type: a text data set gives token ids; the first layer must be an "
     "\"embedding\", got \"linear\""},
    /* parallel */
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'pipeline':2")),
     "parallel.pipeline: unknown field (expected one of: pp, tp, dp, micro_batches, schedule, "
     "partition, stages, virtual_stages, fuse_w)"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'pp':2,'micro_batches':4,'fuse_w':2")),
     "parallel.fuse_w: fusing weight gradients needs parallel.schedule \"zero_bubble\", the "
     "schedule whose backward has W actions"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'pp':2,'micro_batches':2,'fuse_w':3,"
                                            "'schedule':'zero_bubble'")),
     "parallel.fuse_w: 3 micro-batches' weight gradients but parallel.micro_batches is 2"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'fuse_w':33,'schedule':'zero_bubble'")),
     "parallel.fuse_w: 33 is too large (at most 32)"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'pp':0")),
     "parallel.pp: expected a positive integer, got 0"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'tp':'2'")),
     "parallel.tp: expected a positive integer, got \"2\""},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'dp':1.5")),
     "parallel.dp: expected a positive integer, got 1.5"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'micro_batches':0")),
     "parallel.micro_batches: expected a positive integer, got 0"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'schedule':'zb'")),
     "parallel.schedule: expected \"naive\", \"gpipe\", \"1f1b\", \"zero_bubble\" or "
     "\"interleaved_1f1b\", got \"zb\""},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'pp':2,'virtual_stages':2,'micro_batches':3,"
                                            "'schedule':'interleaved_1f1b'")),
     "parallel.micro_batches: 3 is not a multiple of parallel.pp = 2 (schedule "
     "\"interleaved_1f1b\" runs the micro-batches through the chunks in groups of pp)"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'pp':2,'virtual_stages':2,'micro_batches':2")),
     "parallel.virtual_stages: 2 chunks per stage need schedule \"interleaved_1f1b\", not "
     "\"1f1b\""},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'virtual_stages':2,'schedule':'interleaved_1f1b'")),
     "parallel.virtual_stages: 2 chunks on one stage are one model; interleaving needs "
     "parallel.pp of 2 or more"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'pp':2,'virtual_stages':3,'micro_batches':2,"
                                            "'schedule':'interleaved_1f1b'")),
     "parallel.virtual_stages: parallel.pp 2 x 3 chunks need 6 layers but model.layers has only "
     "4"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'pp':2,'virtual_stages':2,'micro_batches':2,"
                                            "'schedule':'interleaved_1f1b','stages':[2,2]")),
     "parallel.stages: 2 entries but parallel.pp x parallel.virtual_stages = 4 chunks (chunk c "
     "of stage s is entry c x pp + s)"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'virtual_stages':0")),
     "parallel.virtual_stages: expected a positive integer, got 0"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'schedule':'naive','micro_batches':4")),
     "parallel.micro_batches: schedule \"naive\" runs the whole batch at once, so it must be 1, "
     "got 4 (use \"gpipe\" or \"1f1b\")"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'pp':5")),
     "parallel.pp: 5 stages but model.layers has only 4 layers"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'pp':65")),
     "parallel.pp: 65 is too large (at most 64)"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'partition':'random'")),
     "parallel.partition: expected \"uniform\", \"balanced\" or \"measured\", got \"random\""},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'pp':2,'stages':[1,1,2]")),
     "parallel.stages: 3 entries but parallel.pp = 2"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'pp':2,'stages':[1,2]")),
     "parallel.stages: the stages hold 3 layers in all but model.layers has 4"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'pp':2,'stages':[0,4]")),
     "parallel.stages[0]: expected a layer count from 1 to 4, got 0"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'pp':2,'stages':[2,'2']")),
     "parallel.stages[1]: expected a layer count from 1 to 4, got \"2\""},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'pp':2,'stages':3")),
     "parallel.stages: expected an array of layer counts, one per stage, got 3"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'pp':2,'stages':[2,2],'partition':'uniform'")),
     "parallel.stages: give either parallel.stages or parallel.partition, not both"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'tp':3")),
     "parallel.tp: 3 does not divide model.layers[2].ffn = 2048"},
    {SPEC(MODEL_L("[{'type':'linear','out':512,'tp':'column'},{'type':'mlp_block','hidden':512,"
                  "'ffn':96},{'type':'linear','out':10}]") "," DATA "," TRAIN "," PAR("'tp':3")),
     "model.layers[0].tp: \"column\" needs parallel.tp = 3 to divide model.layers[0].out = 512"},
    {SPEC(MODEL_L(
         "[{'type':'linear','out':96,'tp':'row'},{'type':'linear','out':10}]") "," DATA "," TRAIN
                                                                               "," PAR("'tp':3")),
     "model.layers[0].tp: \"row\" needs parallel.tp = 3 to divide the layer's input width 784"},
    /* train */
    {SPEC(MODEL "," DATA ",'train':{'batch_size':256,'optimizer':'sgd','lerning_rate':0.1}"),
     "train.lerning_rate: unknown field (expected one of: batch_size, epochs, steps, optimizer, "
     "lr, momentum, dampening, weight_decay, nesterov, betas, eps, seed, shuffle, max_restarts)"},
    {SPEC(MODEL "," DATA ",'train':{'batch_size':'256','optimizer':'sgd','lr':0.1}"),
     "train.batch_size: expected a positive integer, got \"256\""},
    {SPEC(MODEL "," DATA ",'train':{'batch_size':0,'optimizer':'sgd','lr':0.1}"),
     "train.batch_size: expected a positive integer, got 0"},
    {SPEC(MODEL "," DATA ",'train':{'batch_size':256.5,'optimizer':'sgd','lr':0.1}"),
     "train.batch_size: expected a positive integer, got 256.5"},
    {SPEC(MODEL "," DATA ",'train':{'optimizer':'sgd','lr':0.1}"),
     "train.batch_size: required field is missing (a positive integer)"},
    {SPEC(MODEL "," DATA "," TRAIN "," PAR("'dp':3,'micro_batches':4")),
     "train.batch_size: 256 is not divisible by parallel.dp * parallel.micro_batches = 3 * 4"},
    {SPEC(MODEL "," DATA "," TRAIN_SGD(",'epochs':0")),
     "train.epochs: expected a positive integer, got 0"},
    {SPEC(MODEL "," DATA "," TRAIN_SGD(",'steps':-1")),
     "train.steps: expected a non-negative integer, got -1"},
    {SPEC(MODEL "," DATA ",'train':{'batch_size':256,'lr':0.1}"),
     "train.optimizer: required field is missing (\"sgd\" or \"adamw\")"},
    {SPEC(MODEL "," DATA ",'train':{'batch_size':256,'optimizer':'adam','lr':0.1}"),
     "train.optimizer: expected \"sgd\" or \"adamw\", got \"adam\""},
    {SPEC(MODEL "," DATA ",'train':{'batch_size':256,'optimizer':'sgd'}"),
     "train.lr: required field is missing (a positive number)"},
    {SPEC(MODEL "," DATA ",'train':{'batch_size':256,'optimizer':'sgd','lr':0}"),
     "train.lr: expected a positive number, got 0"},
    {SPEC(MODEL "," DATA ",'train':{'batch_size':256,'optimizer':'sgd','lr':'0.1'}"),
     "train.lr: expected a positive number, got \"0.1\""},
    {SPEC(MODEL "," DATA "," TRAIN_SGD(",'momentum':1")),
     "train.momentum: expected a number in [0, 1), got 1"},
    {SPEC(MODEL "," DATA "," TRAIN_SGD(",'dampening':2")),
     "train.dampening: expected a number in [0, 1], got 2"},
    {SPEC(MODEL "," DATA "," TRAIN_SGD(",'weight_decay':-0.1")),
     "train.weight_decay: expected a non-negative number, got -0.1"},
    {SPEC(MODEL "," DATA "," TRAIN_SGD(",'nesterov':'yes'")),
     "train.nesterov: expected true or false, got \"yes\""},
    {SPEC(MODEL "," DATA "," TRAIN_SGD(",'nesterov':true")),
     "train.nesterov: needs train.momentum > 0 and train.dampening = 0 (as torch.optim.SGD), "
     "got momentum 0, dampening 0"},
    {SPEC(MODEL "," DATA "," TRAIN_SGD(",'nesterov':true,'momentum':0.9,'dampening':0.1")),
     "train.nesterov: needs train.momentum > 0 and train.dampening = 0 (as torch.optim.SGD), "
     "got momentum 0.9, dampening 0.1"},
    {SPEC(MODEL "," DATA "," TRAIN_ADAMW(",'momentum':0.9")),
     "train.momentum: applies only to optimizer \"sgd\", not \"adamw\""},
    {SPEC(MODEL "," DATA "," TRAIN_SGD(",'betas':[0.9,0.99]")),
     "train.betas: applies only to optimizer \"adamw\", not \"sgd\""},
    {SPEC(MODEL "," DATA "," TRAIN_ADAMW(",'betas':[0.9]")),
     "train.betas: expected an array of two numbers [beta1, beta2], got [0.9]"},
    {SPEC(MODEL "," DATA "," TRAIN_ADAMW(",'betas':[0.9,1.0]")),
     "train.betas[1]: expected a number in [0, 1), got 1.0"},
    {SPEC(MODEL "," DATA "," TRAIN_ADAMW(",'eps':0")),
     "train.eps: expected a positive number, got 0"},
    {SPEC(MODEL "," DATA "," TRAIN_ADAMW(",'seed':-1")),
     "train.seed: expected a non-negative integer, got -1"},
    {SPEC(MODEL "," DATA "," TRAIN_ADAMW(",'shuffle':1")),
     "train.shuffle: expected true or false, got 1"},
    {SPEC(MODEL "," DATA "," TRAIN_ADAMW(",'max_restarts':-1")),
     "train.max_restarts: expected a non-negative integer, got -1"},
    {SPEC(MODEL "," DATA "," TRAIN ",'checkpoint':{'every_steps':10}"),
     "checkpoint.dir: required field is missing (a folder)"},
    {SPEC(MODEL "," DATA "," TRAIN ",'checkpoint':{'dir':'','every_steps':10}"),
     "checkpoint.dir: expected a folder name of 1 to 1023 bytes, got \"\""},
    {SPEC(MODEL "," DATA "," TRAIN ",'checkpoint':{'dir':'ck'}"),
     "checkpoint.every_steps: required field is missing (a positive integer)"},
    {SPEC(MODEL "," DATA "," TRAIN ",'checkpoint':{'dir':'ck','every_steps':5,'keep':0}"),
     "checkpoint.keep: expected a positive integer, got 0"},
    {SPEC(MODEL "," DATA "," TRAIN ",'checkpoint':{'dir':'ck','every_steps':5,'every':1}"),
     "checkpoint.every: unknown field (expected one of: dir, every_steps, keep)"},
};

Test(spec, reads_checkpoint_and_max_restarts)
{
    mp_spec_t *s = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(parse(SPEC(MODEL "," DATA "," TRAIN_ADAMW(",'max_restarts':3")
                                ",'checkpoint':{'dir':'ck','every_steps':100}"),
                       &s, &err),
                 MP_OK, "%s", err.msg);
    cr_expect(s->checkpoint.enabled);
    cr_expect_str_eq(s->checkpoint.dir, "ck");
    cr_expect_eq(s->checkpoint.every_steps, 100);
    cr_expect_eq(s->checkpoint.keep, 2, "keep defaults to 2");
    cr_expect_eq(s->train.max_restarts, 3);
    mp_spec_free(s);
    cr_assert_eq(parse(SPEC(MODEL "," DATA "," TRAIN), &s, &err), MP_OK, "%s", err.msg);
    cr_expect(!s->checkpoint.enabled);
    cr_expect_eq(s->train.max_restarts, 0);
    mp_spec_free(s);
}

Test(spec, rejects_each_bad_spec_with_its_message)
{
    size_t n = sizeof(bad_specs) / sizeof(bad_specs[0]);
    cr_assert_geq(n, 30);
    for (size_t i = 0; i < n; i++) {
        mp_spec_t *spec = NULL;
        mp_errbuf_t err = {{0}};
        mp_status_t st = parse(bad_specs[i].spec, &spec, &err);
        cr_expect_eq(st, MP_ERR_SPEC, "row %zu: status %d for %s", i, st, bad_specs[i].spec);
        cr_expect_null(spec, "row %zu: spec returned on error", i);
        cr_expect_str_eq(err.msg, bad_specs[i].error, "row %zu:\n  got      %s\n  expected %s", i,
                         err.msg, bad_specs[i].error);
        mp_spec_free(spec);
    }
}

/* DESIGN.md's "Job spec" example, verbatim. */
static const char design_example[] =
    "{\n"
    "  \"name\": \"fmnist-mlp\",\n"
    "  \"model\": { \"input\": 784, \"layers\": [\n"
    "      {\"type\": \"linear\", \"out\": 512}, {\"type\": \"gelu\"},\n"
    "      {\"type\": \"mlp_block\", \"hidden\": 512, \"ffn\": 2048},\n"
    "      {\"type\": \"mlp_block\", \"hidden\": 512, \"ffn\": 2048},\n"
    "      {\"type\": \"linear\", \"out\": 10} ],\n"
    "    \"loss\": \"softmax_xent\" },\n"
    "  \"data\": { \"dataset\": \"fashion-mnist\" },\n"
    "  \"parallel\": { \"pp\": 2, \"tp\": 2, \"dp\": 1, \"micro_batches\": 8, \"schedule\": "
    "\"1f1b\" },\n"
    "  \"train\": { \"batch_size\": 256, \"epochs\": 3, \"optimizer\": \"adamw\", \"lr\": 1e-3, "
    "\"seed\": 1 }\n"
    "}\n";

Test(spec, parses_the_design_example)
{
    mp_spec_t *s = NULL;
    mp_errbuf_t err = {{0}};
    mp_status_t st = mp_spec_parse(design_example, strlen(design_example), &s, &err);
    cr_assert_eq(st, MP_OK, "%s", err.msg);
    cr_expect_str_eq(s->name, "fmnist-mlp");
    cr_expect_eq(s->model.input, 784);
    cr_assert_eq(s->model.nlayers, 5);
    const mp_layer_spec_t *l = s->model.layers;
    cr_expect_eq(l[0].kind, MP_LAYER_LINEAR);
    cr_expect_eq(l[0].out, 512);
    cr_expect_eq(l[0].tp, MP_TP_AUTO);
    cr_expect_eq(l[0].in_dim, 784);
    cr_expect_eq(l[0].out_dim, 512);
    cr_expect_eq(l[1].kind, MP_LAYER_GELU);
    cr_expect_eq(l[1].in_dim, 512);
    cr_expect_eq(l[1].out_dim, 512);
    for (int i = 2; i <= 3; i++) {
        cr_expect_eq(l[i].kind, MP_LAYER_MLP_BLOCK);
        cr_expect_eq(l[i].hidden, 512);
        cr_expect_eq(l[i].ffn, 2048);
        cr_expect_eq(l[i].in_dim, 512);
        cr_expect_eq(l[i].out_dim, 512);
    }
    cr_expect_eq(l[4].kind, MP_LAYER_LINEAR);
    cr_expect_eq(l[4].in_dim, 512);
    cr_expect_eq(l[4].out_dim, 10);
    cr_expect_eq(s->data.kind, MP_DATA_FASHION_MNIST);
    cr_expect_str_eq(s->data.path, MP_FASHION_MNIST_DIR);
    cr_expect_eq(s->data.classes, 10);
    cr_expect_eq(s->parallel.pp, 2);
    cr_expect_eq(s->parallel.tp, 2);
    cr_expect_eq(s->parallel.dp, 1);
    cr_expect_eq(s->parallel.micro_batches, 8);
    cr_expect_eq(s->parallel.schedule, MP_SCHED_1F1B);
    cr_expect_eq(s->parallel.partition, MP_PART_MEASURED);
    cr_expect_eq(s->parallel.nstages_explicit, 0);
    cr_expect_eq(s->train.batch_size, 256);
    cr_expect_eq(s->train.epochs, 3);
    cr_expect_eq(s->train.steps, -1);
    cr_expect_eq(s->train.optimizer, MP_OPTIM_ADAMW);
    cr_expect_eq(s->train.lr, 1e-3);
    cr_expect_eq(s->train.weight_decay, 0.01);
    cr_expect_eq(s->train.beta1, 0.9);
    cr_expect_eq(s->train.beta2, 0.999);
    cr_expect_eq(s->train.eps, 1e-8);
    cr_expect_eq(s->train.seed, 1);
    cr_expect(s->train.shuffle);
    mp_spec_free(s);
}

Test(spec, fills_defaults_when_fields_are_absent)
{
    mp_spec_t *s = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(parse(SPEC(MODEL "," DATA "," TRAIN_SGD("")), &s, &err), MP_OK, "%s", err.msg);
    cr_expect_str_eq(s->name, "job");
    cr_expect_eq(s->parallel.pp, 1);
    cr_expect_eq(s->parallel.tp, 1);
    cr_expect_eq(s->parallel.dp, 1);
    cr_expect_eq(s->parallel.micro_batches, 1);
    cr_expect_eq(s->parallel.schedule, MP_SCHED_1F1B);
    cr_expect_eq(s->parallel.partition, MP_PART_MEASURED);
    cr_expect_eq(s->train.epochs, 1);
    cr_expect_eq(s->train.steps, -1);
    cr_expect_eq(s->train.optimizer, MP_OPTIM_SGD);
    cr_expect_eq(s->train.lr, 0.1);
    cr_expect_eq(s->train.momentum, 0.0);
    cr_expect_eq(s->train.dampening, 0.0);
    cr_expect_eq(s->train.weight_decay, 0.0);
    cr_expect(!s->train.nesterov);
    cr_expect_eq(s->train.seed, 1);
    cr_expect(s->train.shuffle);
    mp_spec_free(s);
}

Test(spec, parses_interleaved_1f1b_with_its_chunks)
{
    mp_spec_t *s = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(parse(SPEC(MODEL "," DATA "," TRAIN_SGD("") "," PAR(
                           "'pp':2,'micro_batches':4,'schedule':'interleaved_1f1b',"
                           "'virtual_stages':2,'stages':[1,1,1,1]")),
                       &s, &err),
                 MP_OK, "%s", err.msg);
    cr_expect_eq(s->parallel.schedule, MP_SCHED_INTERLEAVED_1F1B);
    cr_expect_eq(s->parallel.virtual_stages, 2);
    cr_expect_eq(s->parallel.partition, MP_PART_EXPLICIT);
    cr_expect_eq(s->parallel.nstages_explicit, 4);
    cr_expect_str_eq(mp_sched_kind_name(s->parallel.schedule), "interleaved_1f1b");
    mp_spec_free(s);
    /* Without the field: one chunk a stage. */
    cr_assert_eq(parse(SPEC(MODEL "," DATA "," TRAIN_SGD("") "," PAR("'pp':2")), &s, &err),
                 MP_OK, "%s", err.msg);
    cr_expect_eq(s->parallel.virtual_stages, 1);
    mp_spec_free(s);
}

Test(spec, parses_every_sgd_field)
{
    mp_spec_t *s = NULL;
    mp_errbuf_t err = {{0}};
    mp_status_t st = parse(
        SPEC("'name':'sgd_run-2.a'," MODEL "," DATA ",'train':{'batch_size':60,'epochs':2,"
             "'steps':0,'optimizer':'sgd','lr':1,'momentum':0.9,'dampening':0,"
             "'weight_decay':0.0005,'nesterov':true,'seed':12345678901,'shuffle':false},"
             "'parallel':{'pp':2,'dp':3,'micro_batches':4,'schedule':'gpipe','partition':"
             "'balanced'}"),
        &s, &err);
    cr_assert_eq(st, MP_OK, "%s", err.msg);
    cr_expect_str_eq(s->name, "sgd_run-2.a");
    cr_expect_eq(s->train.batch_size, 60);
    cr_expect_eq(s->train.epochs, 2);
    cr_expect_eq(s->train.steps, 0);
    cr_expect_eq(s->train.lr, 1.0); /* an integer where a number is expected */
    cr_expect_eq(s->train.momentum, 0.9);
    cr_expect_eq(s->train.dampening, 0.0);
    cr_expect_eq(s->train.weight_decay, 0.0005);
    cr_expect(s->train.nesterov);
    cr_expect_eq(s->train.seed, 12345678901ull);
    cr_expect(!s->train.shuffle);
    cr_expect_eq(s->parallel.pp, 2);
    cr_expect_eq(s->parallel.dp, 3);
    cr_expect_eq(s->parallel.micro_batches, 4);
    cr_expect_eq(s->parallel.schedule, MP_SCHED_GPIPE);
    cr_expect_eq(s->parallel.partition, MP_PART_BALANCED);
    mp_spec_free(s);
}

Test(spec, parses_adamw_fields_and_integer_numbers)
{
    mp_spec_t *s = NULL;
    mp_errbuf_t err = {{0}};
    mp_status_t st = parse(SPEC(MODEL "," DATA "," TRAIN_ADAMW(",'betas':[0,0.5],'eps':1,"
                                                               "'weight_decay':0")),
                           &s, &err);
    cr_assert_eq(st, MP_OK, "%s", err.msg);
    cr_expect_eq(s->train.beta1, 0.0);
    cr_expect_eq(s->train.beta2, 0.5);
    cr_expect_eq(s->train.eps, 1.0);
    cr_expect_eq(s->train.weight_decay, 0.0);
    mp_spec_free(s);
}

Test(spec, parses_synthetic_data)
{
    mp_spec_t *s = NULL;
    mp_errbuf_t err = {{0}};
    mp_status_t st = parse(
        SPEC("'model':{'input':32,'layers':[{'type':'linear','out':64},{'type':'relu'},"
             "{'type':'linear','out':5}],'loss':'softmax_xent'},"
             "'data':{'dataset':'synthetic','samples':4096,'classes':5,'seed':5,"
             "'test_samples':512}," TRAIN),
        &s, &err);
    cr_assert_eq(st, MP_OK, "%s", err.msg);
    cr_expect_eq(s->data.kind, MP_DATA_SYNTHETIC);
    cr_expect_eq(s->data.samples, 4096);
    cr_expect_eq(s->data.test_samples, 512);
    cr_expect_eq(s->data.classes, 5);
    cr_expect_eq(s->data.seed, 5);
    cr_expect_str_eq(s->data.path, "");
    cr_expect_eq(s->model.layers[1].kind, MP_LAYER_RELU);
    cr_expect_eq(s->model.layers[2].in_dim, 64);
    mp_spec_free(s);

    cr_assert_eq(parse(SPEC(MODEL "," SYN("10") "," TRAIN), &s, &err), MP_OK, "%s", err.msg);
    cr_expect_eq(s->data.seed, 1);
    cr_expect_eq(s->data.test_samples, 0);
    mp_spec_free(s);
}

Test(spec, parses_text_data_and_sets_the_sequence_length)
{
    mp_spec_t *s = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(parse(SPEC(TEXT_MODEL ",'data':{'dataset':'text','path':'corpus/a.txt',"
                                       "'block_size':64}," TRAIN),
                       &s, &err),
                 MP_OK, "%s", err.msg);
    cr_expect_eq(s->data.kind, MP_DATA_TEXT);
    /* A relative path is kept as written: the process that reads it resolves it. */
    cr_expect_str_eq(s->data.path, "corpus/a.txt");
    cr_expect_eq(s->data.block_size, 64);
    cr_expect_eq(s->data.classes, 256);
    cr_expect_eq(s->model.seq, 64);
    mp_spec_free(s);

    cr_assert_eq(
        parse(SPEC(TEXT_MODEL ",'data':{'dataset':'kjv','block_size':32}," TRAIN), &s, &err), MP_OK,
        "%s", err.msg);
    cr_expect_eq(s->data.kind, MP_DATA_KJV);
    cr_expect_eq(s->data.block_size, 32);
    cr_expect_eq(s->model.seq, 32);
    cr_expect_str_eq(s->data.path, "");
    mp_spec_free(s);

    /* Every other data set has one position per sample. */
    cr_assert_eq(parse(SPEC(MODEL "," SYN("10") "," TRAIN), &s, &err), MP_OK, "%s", err.msg);
    cr_expect_eq(s->model.seq, 1);
    cr_expect_eq(s->data.block_size, 0);
    mp_spec_free(s);
    cr_assert_eq(parse(SPEC(MODEL "," DATA "," TRAIN), &s, &err), MP_OK, "%s", err.msg);
    cr_expect_eq(s->model.seq, 1);
    mp_spec_free(s);
}

Test(spec, parses_fashion_mnist_path)
{
    mp_spec_t *s = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(parse(SPEC(MODEL ",'data':{'dataset':'fashion-mnist','path':'/srv/fm'}," TRAIN),
                       &s, &err),
                 MP_OK, "%s", err.msg);
    cr_expect_str_eq(s->data.path, "/srv/fm");
    mp_spec_free(s);
}

Test(spec, parses_explicit_stages)
{
    mp_spec_t *s = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(parse(SPEC(MODEL "," DATA "," TRAIN "," PAR("'pp':3,'stages':[2,1,1]")), &s,
                       &err),
                 MP_OK, "%s", err.msg);
    cr_expect_eq(s->parallel.partition, MP_PART_EXPLICIT);
    cr_expect_eq(s->parallel.nstages_explicit, 3);
    cr_expect_eq(s->parallel.stage_layers[0], 2);
    cr_expect_eq(s->parallel.stage_layers[1], 1);
    cr_expect_eq(s->parallel.stage_layers[2], 1);
    mp_spec_free(s);
}

Test(spec, accepts_tp_modes_that_hold)
{
    mp_spec_t *s = NULL;
    mp_errbuf_t err = {{0}};
    /* A linear left to split automatically may have widths tp does not
     * divide (it is replicated); "replicate" always holds; "row" splits the
     * 784 inputs by 4; "column" splits the 96 outputs by 4. */
    mp_status_t st = parse(
        SPEC(MODEL_L("[{'type':'linear','out':96,'tp':'row'},{'type':'linear','out':33},"
                     "{'type':'linear','out':96,'tp':'column'},{'type':'mlp_block','hidden':96,"
                     "'ffn':64},{'type':'linear','out':10,'tp':'replicate'}]") "," DATA "," TRAIN
             "," PAR("'tp':4")),
        &s, &err);
    cr_assert_eq(st, MP_OK, "%s", err.msg);
    cr_expect_eq(s->model.layers[0].tp, MP_TP_ROW);
    cr_expect_eq(s->model.layers[1].tp, MP_TP_AUTO);
    cr_expect_eq(s->model.layers[2].tp, MP_TP_COLUMN);
    cr_expect_eq(s->model.layers[4].tp, MP_TP_REPLICATE);
    cr_expect_eq(s->model.layers[3].in_dim, 96);
    mp_spec_free(s);
}

Test(spec, refuses_too_many_layers)
{
    char buf[16384];
    size_t off = (size_t)snprintf(buf, sizeof(buf), "{\"model\":{\"input\":784,\"layers\":[");
    for (int i = 0; i < MP_SPEC_MAX_LAYERS; i++) {
        off += (size_t)snprintf(buf + off, sizeof(buf) - off, "{\"type\":\"relu\"},");
    }
    off += (size_t)snprintf(buf + off, sizeof(buf) - off,
                            "{\"type\":\"linear\",\"out\":10}]},\"data\":{\"dataset\":"
                            "\"fashion-mnist\"},\"train\":{\"batch_size\":8,\"optimizer\":"
                            "\"sgd\",\"lr\":0.1}}");
    cr_assert_lt(off, sizeof(buf));
    mp_spec_t *s = NULL;
    mp_errbuf_t err = {{0}};
    cr_expect_eq(mp_spec_parse(buf, off, &s, &err), MP_ERR_SPEC);
    cr_expect_str_eq(err.msg, "model.layers: 257 layers, at most 256 are supported");
}

Test(spec, load_names_a_missing_file)
{
    mp_spec_t *s = NULL;
    mp_errbuf_t err = {{0}};
    cr_expect_eq(mp_spec_load("/nonexistent/job.json", &s, &err), MP_ERR_IO);
    cr_expect_str_eq(err.msg, "/nonexistent/job.json: cannot open job spec: No such file or "
                              "directory");
    cr_expect_null(s);
}

Test(spec, load_reads_a_file_and_defaults_the_name_to_its_base_name)
{
    char dir[] = "/tmp/mp-test-spec-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/my run.json", dir);
    char *json = dequote(SPEC(MODEL "," DATA "," TRAIN));
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(json, f);
    fclose(f);
    free(json);
    mp_spec_t *s = NULL;
    mp_errbuf_t err = {{0}};
    mp_status_t st = mp_spec_load(path, &s, &err);
    unlink(path);
    rmdir(dir);
    cr_assert_eq(st, MP_OK, "%s", err.msg);
    cr_expect_str_eq(s->name, "my_run");
    cr_expect_eq(s->model.nlayers, 4);
    mp_spec_free(s);
}

Test(spec, frees_everything_it_allocates)
{
    int64_t before = mp_alloc_live_bytes();
    mp_spec_t *s = NULL;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_spec_parse(design_example, strlen(design_example), &s, &err), MP_OK);
    mp_spec_free(s);
    cr_expect_eq(parse(bad_specs[3].spec, &s, &err), MP_ERR_SPEC);
    cr_expect_eq(mp_alloc_live_bytes(), before);
}

Test(spec, names_params_and_their_full_shapes)
{
    mp_layer_spec_t lin = {.kind = MP_LAYER_LINEAR, .out = 10, .in_dim = 512, .out_dim = 10};
    mp_layer_spec_t mlp = {
        .kind = MP_LAYER_MLP_BLOCK, .hidden = 512, .ffn = 2048, .in_dim = 512, .out_dim = 512};
    mp_layer_spec_t gelu = {.kind = MP_LAYER_GELU, .in_dim = 512, .out_dim = 512};
    cr_expect_eq(mp_layer_nparams(&lin), 2);
    cr_expect_eq(mp_layer_nparams(&mlp), 4);
    cr_expect_eq(mp_layer_nparams(&gelu), 0);
    cr_expect_str_eq(mp_layer_param_name(&lin, 0), "weight");
    cr_expect_str_eq(mp_layer_param_name(&lin, 1), "bias");
    cr_expect_null(mp_layer_param_name(&lin, 2));
    cr_expect_null(mp_layer_param_name(&gelu, 0));
    static const char *const names[] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};
    static const int64_t shapes[4][2] = {{512, 2048}, {1, 2048}, {2048, 512}, {1, 512}};
    for (int p = 0; p < 4; p++) {
        int64_t r = -1, c = -1;
        cr_expect_str_eq(mp_layer_param_name(&mlp, p), names[p]);
        mp_layer_param_shape(&mlp, p, &r, &c);
        cr_expect_eq(r, shapes[p][0], "%s rows", names[p]);
        cr_expect_eq(c, shapes[p][1], "%s cols", names[p]);
    }
    int64_t r = -1, c = -1;
    mp_layer_param_shape(&lin, 0, &r, &c);
    cr_expect(r == 512 && c == 10);
    mp_layer_param_shape(&lin, 1, &r, &c);
    cr_expect(r == 1 && c == 10);
    mp_layer_param_shape(&gelu, 0, &r, &c);
    cr_expect(r == 0 && c == 0);
    cr_expect_str_eq(mp_layer_kind_name(MP_LAYER_LINEAR), "linear");
    cr_expect_str_eq(mp_layer_kind_name(MP_LAYER_GELU), "gelu");
    cr_expect_str_eq(mp_layer_kind_name(MP_LAYER_RELU), "relu");
    cr_expect_str_eq(mp_layer_kind_name(MP_LAYER_MLP_BLOCK), "mlp_block");
    cr_expect_str_eq(mp_sched_kind_name(MP_SCHED_NAIVE), "naive");
    cr_expect_str_eq(mp_sched_kind_name(MP_SCHED_GPIPE), "gpipe");
    cr_expect_str_eq(mp_sched_kind_name(MP_SCHED_1F1B), "1f1b");
}
