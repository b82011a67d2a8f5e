// mac_pipeline: three-stage pipelined multiply-accumulate unit.
// Stage 1 registers the operands, stage 2 registers the signed product
// a * b, stage 3 adds it to the accumulator (or loads it when clear is set
// on that sample). in_valid travels with the data so out_valid marks the
// cycles where acc holds a new result, three cycles after the inputs.
module mac_pipeline #(
  parameter int W = 16,
  parameter int ACC_W = 40
) (
  input  logic                    clk,
  input  logic                    rst_n,
  input  logic                    in_valid,
  input  logic                    clear,
  input  logic signed [W-1:0]     a,
  input  logic signed [W-1:0]     b,
  output logic                    out_valid,
  output logic signed [ACC_W-1:0] acc
);
  logic signed [W-1:0]   a_q, b_q;
  logic signed [2*W-1:0] prod_q;
  logic [1:0]            valid_q;
  logic [1:0]            clear_q;

  always_ff @(posedge clk or negedge rst_n) begin
    if (!rst_n) begin
      a_q       <= '0;
      b_q       <= '0;
      prod_q    <= '0;
      valid_q   <= '0;
      clear_q   <= '0;
      acc       <= '0;
      out_valid <= 1'b0;
    end else begin
      // stage 1: operands
      a_q        <= a;
      b_q        <= b;
      valid_q[0] <= in_valid;
      clear_q[0] <= clear;
      // stage 2: product
      prod_q     <= a_q * b_q;
      valid_q[1] <= valid_q[0];
      clear_q[1] <= clear_q[0];
      // stage 3: accumulate
      out_valid  <= valid_q[1];
      if (valid_q[1])
        acc <= clear_q[1] ? ACC_W'(prod_q) : acc + ACC_W'(prod_q);
    end
  end
endmodule
